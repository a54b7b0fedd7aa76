"""Backends: each device's faster kernels behind one interface, and the execution plan.

``training_plan`` and ``generation_plan`` make a process's ``ExecutionPlan`` (measured once per
machine where a choice depends on it); ``prepare_for_training`` and ``prepare_for_generation``
apply a plan to a model: its layers, its hooks, and (for training) the kernels for the loss's. The
device modules are imported only when a plan for their device is made.
"""

from __future__ import annotations

import importlib
import logging

import torch
from torch import nn

from gpt2_lightning.backends.base import Backend, Kernels
from gpt2_lightning.backends.machine import machine
from gpt2_lightning.backends.plan import DTYPES, PLAN_FILE, PRECISION_DTYPES, ExecutionPlan, Workload
from gpt2_lightning.errors import ConfigError

__all__ = ["PLAN_FILE", "ExecutionPlan", "Kernels", "Workload", "backend_for", "default_device",
           "generation_plan", "prepare_for_generation", "prepare_for_training", "training_plan"]

log = logging.getLogger(__name__)

_BACKENDS = {"cpu": "gpt2_lightning.backends.cpu:CPUBackend", "cuda": "gpt2_lightning.backends.cuda:CUDABackend"}


def backend_for(device: str | torch.device) -> Backend:
    """The backend of ``device``'s type; the reference (torch's own kernels) for any other."""
    target = _BACKENDS.get(torch.device(device).type)
    if target is None:
        return Backend()
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)()


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def training_device(accelerator: str) -> str:
    """The device Lightning trains on for ``trainer.accelerator``."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    if accelerator == "mps" or (accelerator == "auto" and torch.backends.mps.is_available()):
        return "mps"
    return "cpu" if accelerator in ("auto", "cpu") else accelerator


def training_plan(device: str | torch.device, precision: str = "auto", width: int = 768,
                  measure: bool = True) -> ExecutionPlan:
    """How training (and the run's own generation) computes on ``device`` in Lightning's
    ``precision`` for a model of residual ``width``: ``auto`` is, on a CPU, bf16 mixed where it
    measures at least 5% faster than fp32 as fp32 would run (through oneDNN where that measures
    faster), else fp32; on GPUs bf16 mixed where supported, else 16-bit mixed. ``measure=False``
    decides without timing (every process alike: fp32 for ``auto`` on a CPU)."""
    if precision not in PRECISION_DTYPES and precision != "auto":
        raise ConfigError(f"trainer.precision={precision} is not one this project trains in")
    backend = backend_for(device)
    precision, train, measured = backend.plan_training(precision, width, measure)
    generate, generation_measured = backend.plan_generation("auto", width, measure)
    return ExecutionPlan(torch.device(device).type, machine(), generate, precision, train,
                         {**measured, **generation_measured})


def generation_plan(device: str | torch.device = "auto", dtype: str = "auto", width: int = 768) -> ExecutionPlan:
    """How generation computes on ``device`` (``auto``: CUDA where there is a GPU, else the CPU):
    ``dtype`` ``auto`` is, on a CPU, bf16 where decoding a token measures faster in it than in
    fp32, else fp32; bf16 (else fp16) on GPUs; ``float32`` / ``bfloat16`` / ``float16`` force one."""
    if dtype != "auto" and dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    device = default_device() if device == "auto" else device
    generate, measured = backend_for(device).plan_generation(dtype, width)
    return ExecutionPlan(torch.device(device).type, machine(), generate, measured=measured)


def prepare_for_training(model: nn.Module, plan: ExecutionPlan) -> Kernels:
    """Swap ``model``'s layers for the plan's training kernels and set its hooks (a ``GPTModel``'s
    ``use_kernels``), in place; the kernels, the loss's hooks among them."""
    return _prepared(model, plan.device, plan.train)


def prepare_for_generation(model: nn.Module, plan: ExecutionPlan) -> nn.Module:
    """``model`` on the plan's device in its generation dtype, in eval mode, its layers swapped
    for the plan's kernels and its hooks set."""
    model = model.to(plan.device, plan.generate.torch_dtype).eval()
    _prepared(model, plan.device, plan.generate)
    return model


def _prepared(model: nn.Module, device: str, workload: Workload) -> Kernels:
    backend = backend_for(device)
    backend.prepare(model, workload)
    kernels = backend.kernels(workload)
    model.use_kernels(kernels.attention, kernels.gelu)
    return kernels
