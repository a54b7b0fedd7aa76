"""Lightning checkpoints (``.ckpt``) read without Lightning: checked, ``weights_only``, and
turned into the model they hold."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from gpt2_lightning.errors import CheckpointMismatchError
from gpt2_lightning.model.gpt import GPTConfig, GPTModel
from gpt2_lightning.model.lora import LoRAConfig, adapter_state_dict, add_lora, merge_lora
from gpt2_lightning.model.pretrained import load_base, model_with_weights


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A Lightning checkpoint, loaded with ``weights_only=True`` (no pickled code runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointMismatchError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError ... by cause
        raise CheckpointMismatchError(
            f"{path}: not a readable checkpoint (truncated, corrupt or not a PyTorch file: "
            f"{str(err).splitlines()[0][:200]})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint \
            or "gpt_config" not in checkpoint.get("hyper_parameters", {}):
        raise CheckpointMismatchError(f"{path}: not a gpt2-lightning training checkpoint "
                                      f"(no state_dict / model config inside)")
    return checkpoint


def _model_tensors(state_dict: dict[str, Any]) -> dict[str, Any]:
    return {k.removeprefix("model."): v for k, v in state_dict.items() if k.startswith("model.")}


def model_from_state_dict(config: GPTConfig, state_dict: dict[str, Any], source: str) -> GPTModel:
    """A ``GPTModel`` of ``config`` in eval mode, holding the GPT weights (``model.*``) of an
    ``InstructionTuner`` state dict; ``source`` names it in errors."""
    return model_with_weights(config, _model_tensors(state_dict), source).eval()


def merge_adapters(model: GPTModel, state_dict: dict[str, Any], source: str) -> GPTModel:
    """``model`` (with LoRA adapters) given the adapters of a checkpoint's state dict, merged
    into its weights in place, in eval mode."""
    adapters = _model_tensors(state_dict)
    expected = adapter_state_dict(model)
    if set(adapters) != set(expected):
        raise CheckpointMismatchError(f"{source}: its adapters do not fit the base model (expected {len(expected)} "
                                      f"adapter tensors like {next(iter(expected))}, found {len(adapters)})")
    model.load_state_dict(adapters, strict=False)
    return merge_lora(model).eval()


def adapted_model(hparams: dict[str, Any], state_dict: dict[str, Any], source: str) -> GPTModel:
    """The base weights a LoRA checkpoint names, with its adapters merged in, in eval mode."""
    config = GPTConfig.from_dict(hparams["gpt_config"])
    model = add_lora(load_base(hparams["base"], drop_rate=config.drop_rate), LoRAConfig(**hparams["adapter"]))
    return merge_adapters(model, state_dict, source)


def model_from_checkpoint(path: str | os.PathLike) -> tuple[GPTModel, dict[str, Any]]:
    """The model of a Lightning checkpoint (``.ckpt``), built from its saved config, and
    its metadata (``model``, ``prompt_style``). A LoRA run's checkpoint gives its base with
    the adapters merged."""
    checkpoint = read_checkpoint(path)
    hparams = checkpoint["hyper_parameters"]
    if hparams.get("adapter"):
        model = adapted_model(hparams, checkpoint["state_dict"], str(path))
    else:
        model = model_from_state_dict(GPTConfig.from_dict(hparams["gpt_config"]), checkpoint["state_dict"], str(path))
    if not isinstance(hparams.get("prompt_style"), str):
        raise CheckpointMismatchError(f"{path}: the checkpoint holds no prompt style (hyper_parameters.prompt_style); "
                                      f"it cannot say how to prompt its model")
    return model, {"model": model.cfg.to_dict(), "prompt_style": hparams["prompt_style"]}
