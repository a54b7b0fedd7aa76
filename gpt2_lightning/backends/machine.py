"""What a measurement depends on: the CPU (its vendor, family, model, vector flags and cores), the
settings that cap or change its kernels, the GPU, the threads torch uses, torch's version."""

from __future__ import annotations

import functools
import os
import platform
import time
from collections.abc import Callable

import torch

# The CPU flags that decide which kernels are fast: without AVX-512 BF16 (or AMX), bf16 is
# emulated, ~20x slower than fp32 on an AVX2-only Zen 3 of the same marketing name as a Zen 4.
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
# Environment settings, read as a process starts, that cap the instructions torch's kernels use
# (ATen's own, oneDNN's, MKL's) or let oneDNN multiply fp32 in a narrower format. On one Zen 4,
# oneDNN, ATen and MKL capped at AVX2 turned the training plan from bf16 mixed (26.4 against
# fp32's 47.7 ms) to fp32 (bf16 3.1x slower than fp32 in the first round).
KERNEL_SETTINGS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
                   "ONEDNN_DEFAULT_FPMATH_MODE", "DNNL_DEFAULT_FPMATH_MODE")


def machine() -> str:
    """What a measurement holds for: ``AMD EPYC [AuthenticAMD family 25 model 17, avx2 fma avx512f
    avx512_bf16, 2 cores], 2 threads, torch 2.13.0`` (the part in brackets tells machines apart
    that share a marketing name), with any of ``KERNEL_SETTINGS`` that is set (``..., 2 cores,
    ONEDNN_MAX_CPU_ISA=AVX2]``)."""
    gpu = f" + {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    settings = "".join(f", {name}={os.environ[name]}" for name in KERNEL_SETTINGS if os.environ.get(name))
    return (f"{cpu_model()} [{cpu_identity()}{settings}]{gpu}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}")


@functools.lru_cache(maxsize=1)
def cpu_identity() -> str:
    """This machine's CPU as ``cpu_identity_of`` describes it."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        text = ""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cpu_identity_of(text, cores) if text else f"{platform.machine()}, {cores} cores"


def cpu_identity_of(cpuinfo: str, cores: int) -> str:
    """The vendor, family and model of the first processor in ``/proc/cpuinfo`` text, which of
    ``SPEED_FLAGS`` it has, and ``cores``: what decides speed, not the marketing name."""
    first = cpuinfo.strip().split("\n\n", 1)[0]
    fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in first.splitlines())}
    flags = set(fields.get("flags", "").split())
    vector = " ".join(flag for flag in SPEED_FLAGS if flag in flags) or "no AVX2"
    return (f"{fields.get('vendor_id', platform.machine())} family {fields.get('cpu family', '?')} "
            f"model {fields.get('model', '?')}, {vector}, {cores} core{'s' if cores != 1 else ''}")


def timings(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of each of ``repeats`` runs of ``fn()`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
