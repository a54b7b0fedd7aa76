"""Which device and number format to use: checked early, chosen for speed where it is safe."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch

from gpt2_lightning.calibrate import fastest_dtype, onednn_faster
from gpt2_lightning.errors import ConfigError
from gpt2_lightning.onednn import use_onednn_linears

log = logging.getLogger(__name__)
AUTO_PRECISION_VARIABLE = "GPT2_LIGHTNING_AUTO_PRECISION"


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


def resolve_precision(precision: str, accelerator: str, width: int = 768) -> str:
    """``auto``: on a CPU, bf16 mixed precision where bf16 matmuls measure faster than fp32 for
    a model of ``width`` (see ``calibrate``), else fp32; on GPUs bf16 mixed where supported,
    else 16-bit mixed. The processes Lightning launches from this one (DDP) inherit the choice."""
    if precision != "auto":
        return precision
    inherited = os.environ.get(AUTO_PRECISION_VARIABLE)
    if inherited and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return inherited
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        chosen = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    elif accelerator in ("auto", "cpu") and fastest_dtype("cpu", "train", width) == torch.bfloat16:
        chosen = "bf16-mixed"
    else:
        chosen = "32-true"
    os.environ[AUTO_PRECISION_VARIABLE] = chosen
    return chosen


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def inference_dtype(device: str | torch.device, requested: str = "auto", width: int = 768) -> torch.dtype:
    """The weights' dtype for generation: ``auto`` is, on a CPU, bf16 where decoding a token
    measures faster in it than in fp32 (see ``calibrate``), else fp32; bf16 (else fp16) on
    GPUs; ``float32`` / ``bfloat16`` / ``float16`` force one."""
    if requested != "auto":
        try:
            return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[requested]
        except KeyError:
            raise ConfigError(f"unknown dtype {requested!r}; use auto, float32, bfloat16 or float16") from None
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if kind == "cpu":
        return fastest_dtype("cpu", "generate", width)
    return torch.float32


def for_inference(model: torch.nn.Module, device: str | torch.device, dtype: str = "auto") -> torch.nn.Module:
    """``model`` on ``device`` (``auto``: CUDA where there is a GPU, else the CPU) in the
    generation dtype (see ``inference_dtype``), in eval mode; in fp32 on a CPU, its linear
    layers through oneDNN where that measures faster (see ``onednn``)."""
    if device == "auto":
        device = default_device()
    width = _width(model)
    model = model.to(device, inference_dtype(device, dtype, width)).eval()
    if torch.device(device).type == "cpu" and next(model.parameters()).dtype == torch.float32 and \
            onednn_faster(width, "generate"):
        use_onednn_linears(model)
    return model


def for_training(model: torch.nn.Module, device: str | torch.device, precision: str) -> torch.nn.Module:
    """``model`` as it trains on ``device`` in Lightning's ``precision``: in fp32 on a CPU, its
    linear layers through oneDNN where that measures faster (see ``onednn``)."""
    width = _width(model)
    if torch.device(device).type == "cpu" and precision in ("32-true", "32") and onednn_faster(width, "train"):
        use_onednn_linears(model)
    return model


def _width(model: torch.nn.Module) -> int:
    """The model's residual width (what the calibration measures for), 768 where it has no config."""
    return getattr(getattr(model, "cfg", None), "emb_dim", 768)
