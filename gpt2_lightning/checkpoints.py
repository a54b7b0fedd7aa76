"""Reading checkpoints, and exporting fine-tuned weights for use without Lightning.

An export is a folder with ``model.safetensors`` and ``config.json``; the config carries
the model shape and the prompt style the model was trained with, so whoever loads the
export uses the same template without being told.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from gpt2_lightning.io import atomic_write, write_json
from gpt2_lightning.model import GPTConfig, GPTModel
from gpt2_lightning.pretrained import (
    WEIGHTS_FILE,
    CheckpointMismatchError,
    load_pretrained,
    load_state_dict_checked,
    read_safetensors,
)

CONFIG_FILE = "config.json"
FORMAT = "gpt2-lightning"


def export_model(model: GPTModel, folder: str | os.PathLike, prompt_style: str) -> Path:
    """Write ``model`` into ``folder`` as safetensors + config JSON; return the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # The tied head is the same tensor as the token embedding: store it once.
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()
             if not (model.cfg.tie_weights and k == "out_head.weight")}
    with atomic_write(folder / WEIGHTS_FILE, binary=True) as f:
        f.write(safetensors.torch.save(state))
    write_json(folder / CONFIG_FILE, {"format": FORMAT, "model": model.cfg.to_dict(),
                                      "prompt_style": prompt_style})
    return folder


def is_export(folder: str | os.PathLike) -> bool:
    config = Path(folder) / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("format") == FORMAT
    except (ValueError, AttributeError):
        return False


def load_export(folder: str | os.PathLike) -> tuple[GPTModel, dict[str, Any]]:
    """The model of an export folder and its metadata (``prompt_style``, ``model``)."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / CONFIG_FILE).read_text())
        config = GPTConfig.from_dict(meta["model"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointMismatchError(f"{folder / CONFIG_FILE}: not a valid export config ({err})") from None
    state = read_safetensors(folder / WEIGHTS_FILE)
    if config.tie_weights:
        state["out_head.weight"] = state["tok_emb.weight"]
    model = GPTModel(config)
    load_state_dict_checked(model, state, source=str(folder / WEIGHTS_FILE))
    return model.eval(), meta


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


def _load_weights(model: GPTModel, checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    load_state_dict_checked(model, state, source=str(path))


def load_checkpoint_weights(model: GPTModel, path: str | os.PathLike) -> None:
    """Put the GPT weights of a Lightning checkpoint into ``model`` (shapes checked)."""
    _load_weights(model, read_checkpoint(path), path)


def model_from_checkpoint(path: str | os.PathLike) -> tuple[GPTModel, dict[str, Any]]:
    """The model of a Lightning checkpoint (``.ckpt``), built from its saved config, and
    its metadata (``model``, ``prompt_style``)."""
    checkpoint = read_checkpoint(path)
    hparams = checkpoint["hyper_parameters"]
    model = GPTModel(GPTConfig.from_dict(hparams["gpt_config"]))
    _load_weights(model, checkpoint, path)
    return model.eval(), {"model": model.cfg.to_dict(), "prompt_style": hparams.get("prompt_style", "alpaca")}


def load_model(spec: str | os.PathLike, cache_dir: str | os.PathLike | None = None
               ) -> tuple[GPTModel, dict[str, Any]]:
    """A model in eval mode and its metadata (``prompt_style``) from whatever a user has:
    an export folder, a run directory (its export, else its best or last checkpoint), a
    Lightning ``.ckpt``, or GPT-2 weights (a size name, safetensors file or folder, URL;
    these have no prompt style of their own and get ``alpaca``)."""
    path = Path(spec)
    if path.is_dir():
        for folder in (path, path / "export"):
            if is_export(folder):
                return load_export(folder)
        candidates = sorted((path / "checkpoints").glob("best-*.ckpt")) + [path / "checkpoints" / "last.ckpt"]
        for checkpoint in candidates:
            if checkpoint.is_file():
                return model_from_checkpoint(checkpoint)
    elif path.suffix == ".ckpt":
        return model_from_checkpoint(path)
    model = load_pretrained(spec, cache_dir)
    return model.eval(), {"model": model.cfg.to_dict(), "prompt_style": "alpaca"}


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but through a temporary file and a rename: a run
    killed while saving leaves the previous ``last.ckpt`` intact, never a truncated one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with atomic_write(path, binary=True) as f:
            torch.save(checkpoint, f)
