"""The trainer's device and precision settings, checked before any work."""

from __future__ import annotations

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
