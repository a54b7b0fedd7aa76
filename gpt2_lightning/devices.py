"""Which device and number format to use: checked early, chosen for speed where it is safe."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping

import torch

from gpt2_lightning.errors import ConfigError

log = logging.getLogger(__name__)


def check_accelerator(accelerator: str) -> None:
    """Fail early, in words, when the configured device is not on this machine."""
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator} but no CUDA GPU is available here; "
                          f"use trainer=cpu (or trainer.accelerator=auto)")
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.accelerator=mps but Apple's MPS is not available here; use trainer=cpu")
    if accelerator not in ("auto", "cpu", "gpu", "cuda", "mps", "tpu"):
        raise ConfigError(f"unknown trainer.accelerator={accelerator!r}; use cpu, gpu, mps or auto")


# The precisions the model, the loss and the optimizer are written and tested for.
PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "bf16-true", "16-mixed")


def check_trainer(trainer: Mapping) -> None:
    """Fail early, in words, on trainer settings the project cannot train with; warn about
    settings that work but cost (more CPU processes than cores)."""
    check_accelerator(str(trainer.get("accelerator", "auto")))
    precision = str(trainer.get("precision", "auto"))
    if precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision} is not one this project trains in; use "
                          f"{', '.join(PRECISIONS)} (16-mixed on GPUs)")
    devices, cores = trainer.get("devices", 1), os.cpu_count() or 1
    on_cpu = trainer.get("accelerator") == "cpu" or (trainer.get("accelerator", "auto") == "auto"
                                                     and not torch.cuda.is_available())
    if on_cpu and isinstance(devices, int) and devices > cores:
        log.warning("trainer.devices=%d starts %d training processes on %d CPU cores: they share the cores "
                    "and run slower than %d would", devices, devices, cores, cores)


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run about twice as fast as fp32 on such CPUs."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto``: bf16 mixed precision where the device computes bf16 natively, else fp32
    (16-bit mixed on GPUs without bf16)."""
    if precision != "auto":
        return precision
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if accelerator in ("auto", "cpu") and cpu_has_native_bf16():
        return "bf16-mixed"
    return "32-true"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def inference_dtype(device: str | torch.device, requested: str = "auto") -> torch.dtype:
    """The weights' dtype for generation: ``auto`` is bf16 where the device computes it
    natively (decoding reads every weight per token, so half the bytes is ~1.7x the
    speed on such CPUs), else fp32; ``float32`` / ``bfloat16`` / ``float16`` force one."""
    if requested != "auto":
        try:
            return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[requested]
        except KeyError:
            raise ConfigError(f"unknown dtype {requested!r}; use auto, float32, bfloat16 or float16") from None
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if kind == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def for_inference(model: torch.nn.Module, device: str | torch.device, dtype: str = "auto") -> torch.nn.Module:
    """``model`` on ``device`` (``auto``: CUDA where there is a GPU, else the CPU) in the
    generation dtype (see ``inference_dtype``), in eval mode."""
    if device == "auto":
        device = default_device()
    return model.to(device, inference_dtype(device, dtype)).eval()
