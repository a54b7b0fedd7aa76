"""Which number format and kernels are fastest on this machine: measured, not read off a CPU flag.

A CPU with AVX512-BF16 may run bf16 matmuls at twice the fp32 speed (one AMD EPYC) or at
two thirds of it (one Intel Xeon), and one without AVX-512 emulates bf16 20x slower. So the
execution plan (``backends.plan``) times a few matmuls of the model's width in each
candidate, once per machine, device, workload and width, and keeps the answer in the user
cache (``calibration.json``); likewise the fp32 linear kernel, the attention path and the
bf16 GELU form.

The race of number formats has two rounds, so that it stays under a second even where a
candidate is emulated: in the first every candidate runs a small, compute-bound part of the
workload, and one more than ``SCREEN_FACTOR`` times slower there than the baseline is out
(emulated bf16: 8x at 256 x 256, 30x at a batch's size); the others then run the whole
workload. The other races have no emulated candidate and time each one's whole workload.
Within a round the candidates run in turns, one run of each and again, so that what slows a
process's first runs (threads starting, the clock rising) falls on no candidate alone: timed
first and alone, torch's fp32 kernel took 25.6-40.0 ms against 18-20 timed later on one Intel
Xeon, and a kernel slower in a training step won. A workload timed in a process (fp32 is the
baseline of several races) is not timed again in it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gpt2_lightning.backends.cpu.attention import matmul_attention
from gpt2_lightning.backends.cpu.onednn import LINEAR_GRADIENTS, OneDNNLinear, onednn_available
from gpt2_lightning.backends.machine import machine, timings
from gpt2_lightning.io import read_json, write_json
from gpt2_lightning.resources import cache_dir

log = logging.getLogger(__name__)

CACHE_FILE = "calibration.json"
MARGIN = 0.95  # another candidate must be 5% faster than the baseline (fp32) to be chosen over it
TOKENS = {"train": 256, "generate": 4}  # a training batch's tokens; tokens decoded one by one
SCREEN_SIDE = 256  # the first round's product for training: 256 x 256 by 256 x 256
SCREEN_FACTOR = 3.0  # a candidate that slow against the baseline in the first round is out
MIN_TIMED_SECONDS = 0.05  # a workload is timed up to 6 times while its runs add up to less
# The sequence lengths the attention race tries (shortest first) and the sequences it times at
# once. Beyond 256 tokens SDPA measured as fast as the matmuls, and holds no probabilities.
ATTENTION_TOKENS = (128, 256)
ATTENTION_BATCH = 2


@dataclass(frozen=True)
class Race:
    """The outcome of timing candidates for one workload: the fastest, each finalist's seconds
    of the whole workload and every candidate's seconds in the first round."""

    fastest: str
    seconds: dict[str, float]
    screen: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        first = next(iter(self.screen), None)
        out = [f"{name} out in the first round ({s * 1e3:.2f} ms against {self.screen[first] * 1e3:.2f})"
               for name, s in self.screen.items() if name not in self.seconds]
        return ", ".join([f"{name} {s * 1e3:.2f} ms" for name, s in self.seconds.items()] + out) + \
            f" -> {self.fastest}"


Candidate = Callable[[bool], Callable[[], object]]  # a run of the workload (True: of the first round's)


@dataclass(frozen=True)
class _WorkloadRun:
    """The candidate that runs ``_workload`` with these arguments."""

    device: torch.device
    workload: str
    width: int
    dtype: torch.dtype
    linears: str

    def __call__(self, screen: bool) -> Callable[[], None]:
        return _workload(self.device, self.workload, self.width, self.dtype, self.linears, screen)


# Each whole workload's fewest seconds timed in this process: fp32 is the baseline of several
# races, and only this process's own times are compared, never one read back from the cache.
_TIMED: dict[_WorkloadRun, float] = {}


def dtype_race(device: torch.device | str, workload: str, width: int, linears: str = "torch") -> Race:
    """fp32 against bf16 for ``workload`` (``train``: matmuls of a batch of tokens and their
    gradients; ``generate``: tokens one by one through the weights) on ``device`` for a model
    of ``width``; fp32 as it would run (``linears``: its layers' kernel, a ``Workload.linears``).
    bf16 wins only by 5%."""
    device = torch.device(device)
    fp32 = "float32" if linears == "torch" else f"float32+{linears}"
    run = functools.partial(_WorkloadRun, device, workload, min(width, 768))
    return _race(device, workload, width, {fp32: run(torch.float32, linears), "bfloat16": run(torch.bfloat16, "torch")},
                 screened=True)


def onednn_race(width: int, workload: str) -> Race | None:
    """torch's ``F.linear`` (``float32``) against oneDNN (``OneDNNLinear``) for ``workload`` (see
    ``dtype_race``) in fp32 on this CPU, for training also oneDNN with torch's gradients
    (``onednn-forward``); None where oneDNN's op is not available. Each runs the whole
    workload, no first round: no fp32 kernel is emulated, and on one Zen 5 a noisy first round
    put oneDNN out (0.97 ms against torch's 0.28) where it multiplies twice as fast."""
    if not onednn_available():
        return None
    run = functools.partial(_WorkloadRun, torch.device("cpu"), workload, min(width, 768), torch.float32)
    kernels = ["onednn", "onednn-forward"] if workload == "train" else ["onednn"]
    return _race(torch.device("cpu"), workload, width, {"float32": run("torch"), **{k: run(k) for k in kernels}})


def gelu_race(dtype: torch.dtype, width: int) -> Race:
    """GPT-2's tanh GELU (``tanh``) against the exact one (``erf``), forward and backward over a
    training batch's MLP activations in ``dtype`` (bf16 / fp16, where the two differ by less than
    the format's rounding) on this CPU. The exact one wins only by 5%."""
    def run(form: str) -> Callable[[], object]:  # inputs made only where the cache does not hold the answer
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(TOKENS["train"], 4 * min(width, 768), dtype=dtype, generator=generator)
        grad = torch.randn(x.shape, dtype=dtype, generator=generator)
        # the two kernels autograd would run, called directly: a process's first
        # ``autograd.grad`` with a given gradient imports sympy (0.4 s)
        return lambda: (F.gelu(x, approximate=form), torch.ops.aten.gelu_backward(grad, x, approximate=form))

    return _race(torch.device("cpu"), f"gelu {_name(dtype)}", width,
                 {"tanh": lambda screen: run("tanh"), "erf": lambda screen: run("none")})


def attention_race(dtype: torch.dtype, width: int) -> tuple[int, list[Race]]:
    """The longest of ``ATTENTION_TOKENS`` up to which causal attention as two matmuls
    (``attention.matmul_attention``) is 5% faster than SDPA, forward and backward over
    ``ATTENTION_BATCH`` sequences of a width-``width`` model's heads in ``dtype`` on this CPU (0:
    SDPA at every length); and the races that decided it. The shortest length first, and the
    first the matmuls lose ends it: SDPA's lead grows with the length (it holds no
    probabilities), and where bf16 is emulated the longest race is the slowest of the whole
    calibration (AVX2 kernels, bf16: 0.8 s at 256 tokens, 0.2 s at 128)."""
    def run(attend: Callable, tokens: int) -> Callable[[], None]:
        generator = torch.Generator().manual_seed(0)
        qkv = torch.randn(ATTENTION_BATCH, tokens, 3, max(1, min(width, 768) // 64), 64, dtype=dtype,
                          generator=generator, requires_grad=True)

        def attention_and_gradient() -> None:
            q, k, v = qkv.permute(2, 0, 3, 1, 4)  # as the model's attention splits its qkv product
            torch.autograd.grad(attend(q, k, v, is_causal=True).sum(), qkv)

        return attention_and_gradient

    races, longest = [], 0
    for tokens in ATTENTION_TOKENS:
        races.append(_race(torch.device("cpu"), f"attention {_name(dtype)} | {tokens} tokens", width,
                           {"sdpa": lambda screen: run(F.scaled_dot_product_attention, tokens),
                            "matmul": lambda screen: run(matmul_attention, tokens)}))
        if races[-1].fastest != "matmul":
            break
        longest = tokens
    return longest, races


def _race(device: torch.device, workload: str, width: int, candidates: dict[str, Candidate],
          screened: bool = False) -> Race:
    """The fastest of ``candidates``, the first being the baseline another must beat by 5%, each
    timed over its whole workload (``screened``: in the two rounds of the module's docstring, for
    candidates that may be emulated); remembered per machine in the cache. A ``_WorkloadRun``'s
    whole workload is timed once per process, whatever the race."""
    here = machine()
    key = f"{here} | {device.type} | {workload} | width {width} | {' vs '.join(candidates)}"
    path = cache_dir() / CACHE_FILE
    known = _read(path).get(key)
    if isinstance(known, dict) and known.get("fastest") in candidates and isinstance(known.get("seconds"), dict):
        return Race(known["fastest"], known["seconds"], known.get("screen") or {})
    workloads = {name: run for name, run in candidates.items() if isinstance(run, _WorkloadRun)}
    measured = {name: _TIMED[run] for name, run in workloads.items() if run in _TIMED}
    race = (screened_race(candidates, measured=measured) if screened
            else _fastest(_whole_workloads(candidates, list(candidates), measured)))
    _TIMED.update({run: race.seconds[name] for name, run in workloads.items() if name in race.seconds})
    log.info("measured the %s workload on %s (%s): %s", workload, device.type, here, race.summary())
    try:
        write_json(path, {**_read(path), key: {"fastest": race.fastest, "seconds": race.seconds,
                                               "screen": race.screen}})
    except OSError as err:  # an unwritable cache only costs measuring again next time
        log.warning("cannot keep the measurement in %s: %s", path, err.strerror)
    return race


def screened_race(candidates: dict[str, Candidate], seconds_of: Callable[[Callable], float] | None = None,
                  measured: dict[str, float] | None = None) -> Race:
    """The two rounds: every candidate in the first, the ones within ``SCREEN_FACTOR`` of the
    baseline (the first candidate) there in the second, the whole workload, unless ``measured``
    holds its seconds (``seconds_of``: see ``fewest_seconds_in_turns``)."""
    measured = measured or {}
    screen = fewest_seconds_in_turns({name: run(True) for name, run in candidates.items()}, seconds_of)
    baseline = next(iter(candidates))
    finalists = [name for name in candidates if screen[name] <= SCREEN_FACTOR * screen[baseline]]
    return _fastest(_whole_workloads(candidates, finalists, measured, seconds_of), screen)


def _whole_workloads(candidates: dict[str, Candidate], names: list[str], measured: dict[str, float],
                     seconds_of: Callable[[Callable], float] | None = None) -> dict[str, float]:
    """The seconds of the whole workload of each of ``names``, in their order: from ``measured``,
    or timed in turns."""
    timed = fewest_seconds_in_turns({name: candidates[name](False) for name in names if name not in measured},
                                    seconds_of)
    return {name: measured[name] if name in measured else timed[name] for name in names}


def fewest_seconds_in_turns(runs: dict[str, Callable[[], object]],
                            seconds_of: Callable[[Callable], float] | None = None) -> dict[str, float]:
    """The fewest seconds of each of ``runs``, run in turns (one run of each, then again), each at
    least twice and up to 6 times while its runs add up to less than ``MIN_TIMED_SECONDS``: the
    first may build kernels (oneDNN does), and the fewest are the least disturbed by whatever
    else runs. ``seconds_of(run)``: one run's seconds (default: the wall clock's)."""
    seconds_of = seconds_of or (lambda run: timings(run, 1, warmup=0)[0])
    times: dict[str, list[float]] = {name: [] for name in runs}

    def wanted(name: str) -> bool:
        return len(times[name]) < 2 or (len(times[name]) < 6 and sum(times[name]) < MIN_TIMED_SECONDS)

    while any(wanted(name) for name in runs):
        for name, run in runs.items():
            if wanted(name):
                times[name].append(seconds_of(run))
    return {name: min(seconds) for name, seconds in times.items()}


def _fastest(seconds: dict[str, float], screen: dict[str, float] | None = None) -> Race:
    """The race of ``seconds``: the first (the baseline) wins unless another is 5% faster."""
    baseline = next(iter(seconds))
    fastest = min(seconds, key=lambda name: seconds[name] / (1 if name == baseline else MARGIN))
    return Race(fastest, seconds, screen or {})


def _workload(device: torch.device, workload: str, width: int, dtype: torch.dtype, linears: str,
              screen: bool) -> Callable[[], None]:
    """One run of the workload on a GPT-2 MLP's weights (``linears``: a ``Workload.linears``):
    for ``train`` a batch's forward and backward from fp32 weights under autocast to ``dtype``, as
    mixed precision runs it; for ``generate`` tokens one by one through weights in ``dtype``, four
    MLPs' worth, more than a CPU cache holds, as decoding streams every weight from memory. The
    first round (``screen``): for ``train`` one square product of at most 256 (compute-bound, as
    a batch's products are, at a fraction of their work); for ``generate`` one token through one
    MLP."""
    train = workload == "train"
    weights, rows, steps = _weights(device, width), TOKENS["train"], 1  # a training batch
    if train and screen:
        side = min(width, SCREEN_SIDE)
        weights, rows = [torch.randn(side, side, device=device)], side
    elif not train:  # decoding, one row a step
        rows, steps = 1, 1 if screen else TOKENS["generate"]
        if not screen:  # four MLPs, so that no weight stays in a cache
            weights = [w.clone() for w in weights * 4]
    layers = [_linear(weight) for weight in weights]
    x = torch.randn(rows, weights[0].shape[1], device=device)
    if not train:
        layers, x = [layer.to(dtype).requires_grad_(False) for layer in layers], x.to(dtype)
    if linears in LINEAR_GRADIENTS:
        layers = [OneDNNLinear(layer, LINEAR_GRADIENTS[linears]) for layer in layers]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=train and dtype != torch.float32)
    backward = train and not screen

    def run() -> None:
        with torch.enable_grad() if backward else torch.inference_mode():
            for _ in range(steps):
                out = x
                with autocast:
                    for layer in layers:
                        out = layer(out)
                if backward:
                    out.float().sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return run


def _linear(weight: torch.Tensor) -> nn.Linear:
    """A bias-free ``nn.Linear`` holding ``weight`` (none of its own initialisation's time)."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    layer.weight = nn.Parameter(weight)
    return layer


@functools.lru_cache(maxsize=1)
def _weights(device: torch.device, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normal random weights of a GPT-2 MLP's two layers (``nn.Linear`` layout), made once."""
    generator = torch.Generator(device=device).manual_seed(0)
    return tuple(torch.randn(*shape, device=device, generator=generator)
                 for shape in [(4 * width, width), (width, 4 * width)])


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _read(path) -> dict:
    data = read_json(path, missing={}, invalid={})
    return data if isinstance(data, dict) else {}
