"""Which number format is fastest on this machine: measured, not read off a CPU flag.

A CPU with AVX512-BF16 may run bf16 matmuls at twice the fp32 speed (one AMD EPYC) or at
two thirds of it (one Intel Xeon). So ``precision=auto`` and the generation dtype ``auto``
time a few matmuls of the model's width in each candidate, once per machine, device,
workload and width, and keep the answer in the user cache (``calibration.json``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import time

import torch
from torch import nn

from gpt2_lightning.io import write_json
from gpt2_lightning.onednn import OneDNNLinear
from gpt2_lightning.resources import cache_dir

log = logging.getLogger(__name__)

CACHE_FILE = "calibration.json"
MARGIN = 0.95  # another candidate must be 5% faster than the baseline (fp32) to be chosen over it
TOKENS = {"train": 256, "generate": 1}  # a training batch's tokens; one decoded token


def fastest_dtype(device: torch.device | str, workload: str, width: int) -> torch.dtype:
    """fp32 or bf16, whichever runs ``workload`` (``train``: matmuls of a batch of tokens and
    their gradients; ``generate``: one token through the weights) faster on ``device`` for a
    model of ``width``; never a dtype slower than fp32 (on a CPU, fp32 as it would run:
    through oneDNN where that measures faster, see ``onednn_faster``)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Processes started apart (torchrun, SLURM) could measure, or remember, apart and
        # disagree; the ones Lightning starts inherit the first process's choice instead.
        return torch.float32
    device = torch.device(device)
    timed = functools.partial(_time, device, workload, min(width, 768))
    fp32 = "float32"
    if device.type == "cpu" and onednn_faster(width, workload):
        fp32, timed = "float32+onednn", functools.partial(timed, onednn=True)
    fastest = _fastest(device, workload, width, {fp32: functools.partial(timed, torch.float32),
                                                 "bfloat16": functools.partial(timed, torch.bfloat16)})
    return torch.bfloat16 if fastest == "bfloat16" else torch.float32


def onednn_faster(width: int, workload: str) -> bool:
    """Whether ``workload`` (see ``fastest_dtype``) runs faster on this CPU with its fp32 linear
    layers through oneDNN (``OneDNNLinear``) than through torch's ``F.linear``, for a model of
    ``width``."""
    if not torch.backends.mkldnn.is_available():
        return False
    timed = functools.partial(_time, torch.device("cpu"), workload, min(width, 768), torch.float32)
    fastest = _fastest(torch.device("cpu"), workload, width,
                       {"float32": timed, "onednn": functools.partial(timed, onednn=True)})
    return fastest == "onednn"


def _fastest(device: torch.device, workload: str, width: int, candidates: dict) -> str:
    """The name of the fastest of ``candidates`` (name -> seconds of a timed run), the first
    name being the baseline another must beat by 5%; remembered per machine in the cache."""
    here = machine()
    key = f"{here} | {device.type} | {workload} | width {width} | {' vs '.join(candidates)}"
    path = cache_dir() / CACHE_FILE
    known = _read(path)
    if key in known:
        return known[key]["fastest"]
    seconds = {name: run() for name, run in candidates.items()}
    baseline = next(iter(seconds))
    fastest = min(seconds, key=lambda name: seconds[name] / (1 if name == baseline else MARGIN))
    log.info("measured %s matmuls on %s (%s): %s -> %s", workload, device.type, here,
             ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in seconds.items()), fastest)
    try:
        write_json(path, {**_read(path), key: {"fastest": fastest, "seconds": seconds}})
    except OSError as err:  # an unwritable cache only costs measuring again next time
        log.warning("cannot keep the measurement in %s: %s", path, err.strerror)
    return fastest


def machine() -> str:
    """The CPU model, the threads torch uses, and torch's version: what the answer depends on."""
    gpu = f" + {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu_model()}{gpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _time(device: torch.device, workload: str, width: int, dtype: torch.dtype, repeats: int = 5,
          onednn: bool = False) -> float:
    """Fewest seconds of the workload on a GPT-2 MLP's weights (``nn.Linear`` layout): for
    ``train`` forward and backward from fp32 weights, under autocast to ``dtype`` as mixed
    precision runs it; for ``generate`` 8 tokens one by one through weights in ``dtype``
    (``onednn``: through ``OneDNNLinear``), four MLPs' worth, more than a CPU cache holds, as
    decoding streams every weight from memory."""
    generator = torch.Generator(device=device).manual_seed(0)
    train = workload == "train"
    shapes = [(width, 4 * width), (4 * width, width)] * (1 if train else 4)
    layers = [nn.Linear(*shape, bias=False, device=device) for shape in shapes]
    for layer in layers:
        layer.weight.data.normal_(generator=generator)
    x = torch.randn(TOKENS[workload], width, device=device, generator=generator)
    if not train:
        layers, x = [layer.to(dtype).requires_grad_(False) for layer in layers], x.to(dtype)
    if onednn:
        layers = [OneDNNLinear(layer) for layer in layers]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=train and dtype != torch.float32)

    def run() -> None:
        with torch.enable_grad() if train else torch.inference_mode():
            for _ in range(1 if train else 8):
                out = x
                with autocast:
                    for layer in layers:
                        out = layer(out)
                if train:
                    out.float().sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    run()  # warm up (oneDNN builds its kernels on the first calls)
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)  # the least disturbed by whatever else runs


def _read(path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
