"""The project's own export: a folder with ``model.safetensors`` and ``config.json``.

The config carries the model shape and the prompt style the model was trained with, so
whoever loads the export uses the same template without being told.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import safetensors.torch

from gpt2_lightning.errors import CheckpointMismatchError
from gpt2_lightning.io import atomic_write, read_json, write_json
from gpt2_lightning.model.gpt import GPTConfig, GPTModel
from gpt2_lightning.model.pretrained import WEIGHTS_FILE, model_with_weights, read_safetensors

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
    config = read_json(Path(folder) / CONFIG_FILE, missing=None, invalid=None)
    return isinstance(config, dict) and config.get("format") == FORMAT


def load_export(folder: str | os.PathLike) -> tuple[GPTModel, dict[str, Any]]:
    """The model of an export folder and its metadata (``prompt_style``, ``model``)."""
    folder = Path(folder)
    try:
        meta = read_json(folder / CONFIG_FILE)
        config = GPTConfig.from_dict(meta["model"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointMismatchError(f"{folder / CONFIG_FILE}: not a valid export config ({err})") from None
    if not isinstance(meta.get("prompt_style"), str):
        raise CheckpointMismatchError(f"{folder / CONFIG_FILE}: no prompt_style; the export cannot say how to prompt "
                                      f"its model")
    state = read_safetensors(folder / WEIGHTS_FILE)
    if config.tie_weights:
        state["out_head.weight"] = state["tok_emb.weight"]
    return model_with_weights(config, state, str(folder / WEIGHTS_FILE)).eval(), meta
