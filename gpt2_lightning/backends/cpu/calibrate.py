"""Which number format is fastest on this machine: measured, not read off a CPU flag.

A CPU with AVX512-BF16 may run bf16 matmuls at twice the fp32 speed (one AMD EPYC) or at
two thirds of it (one Intel Xeon), and one without AVX-512 emulates bf16 20x slower. So the
execution plan (``backends.plan``) times a few matmuls of the model's width in each
candidate, once per machine, device, workload and width, and keeps the answer in the user
cache (``calibration.json``).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
from torch import nn

from gpt2_lightning.backends.cpu.onednn import OneDNNLinear, onednn_available
from gpt2_lightning.backends.machine import machine, timings
from gpt2_lightning.io import read_json, write_json
from gpt2_lightning.resources import cache_dir

log = logging.getLogger(__name__)

CACHE_FILE = "calibration.json"
MARGIN = 0.95  # another candidate must be 5% faster than the baseline (fp32) to be chosen over it
TOKENS = {"train": 256, "generate": 1}  # a training batch's tokens; one decoded token


@dataclass(frozen=True)
class Race:
    """The outcome of timing candidates for one workload: the fastest, and each one's seconds."""

    fastest: str
    seconds: dict[str, float]

    def summary(self) -> str:
        return ", ".join(f"{name} {s * 1e3:.2f} ms" for name, s in self.seconds.items()) + f" -> {self.fastest}"


def dtype_race(device: torch.device | str, workload: str, width: int, onednn: bool = False) -> Race:
    """fp32 against bf16 for ``workload`` (``train``: matmuls of a batch of tokens and their
    gradients; ``generate``: one token through the weights) on ``device`` for a model of
    ``width``; fp32 as it would run (``onednn``: its linear layers through oneDNN). bf16 wins
    only by 5%."""
    device = torch.device(device)
    timed = functools.partial(_time, device, workload, min(width, 768))
    fp32 = "float32+onednn" if onednn else "float32"
    return _race(device, workload, width, {fp32: functools.partial(timed, torch.float32, onednn=onednn),
                                           "bfloat16": functools.partial(timed, torch.bfloat16)})


def onednn_race(width: int, workload: str) -> Race | None:
    """torch's ``F.linear`` against oneDNN (``OneDNNLinear``) for ``workload`` (see
    ``dtype_race``) in fp32 on this CPU; None where oneDNN's op is not available."""
    if not onednn_available():
        return None
    timed = functools.partial(_time, torch.device("cpu"), workload, min(width, 768), torch.float32)
    return _race(torch.device("cpu"), workload, width,
                 {"float32": timed, "onednn": functools.partial(timed, onednn=True)})


def _race(device: torch.device, workload: str, width: int, candidates: dict) -> Race:
    """The fastest of ``candidates`` (name -> seconds of a timed run), the first name being the
    baseline another must beat by 5%; remembered per machine in the cache."""
    here = machine()
    key = f"{here} | {device.type} | {workload} | width {width} | {' vs '.join(candidates)}"
    path = cache_dir() / CACHE_FILE
    known = _read(path).get(key)
    if isinstance(known, dict) and known.get("fastest") in candidates and isinstance(known.get("seconds"), dict):
        return Race(known["fastest"], known["seconds"])
    seconds = {name: run() for name, run in candidates.items()}
    baseline = next(iter(seconds))
    fastest = min(seconds, key=lambda name: seconds[name] / (1 if name == baseline else MARGIN))
    race = Race(fastest, seconds)
    log.info("measured %s matmuls on %s (%s): %s", workload, device.type, here, race.summary())
    try:
        write_json(path, {**_read(path), key: {"fastest": fastest, "seconds": seconds}})
    except OSError as err:  # an unwritable cache only costs measuring again next time
        log.warning("cannot keep the measurement in %s: %s", path, err.strerror)
    return race


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

    # Two warm-up runs (oneDNN builds its kernels on the first calls); the fewest seconds are
    # the least disturbed by whatever else runs.
    return min(timings(run, repeats, warmup=2))


def _read(path) -> dict:
    data = read_json(path, missing={}, invalid={})
    return data if isinstance(data, dict) else {}
