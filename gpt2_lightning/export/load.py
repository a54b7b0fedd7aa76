"""``load_model``: a model ready to generate from anything a user has."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gpt2_lightning.data.prompts import DEFAULT_STYLE
from gpt2_lightning.errors import CheckpointMismatchError
from gpt2_lightning.export.folder import CONFIG_FILE, is_export, load_export
from gpt2_lightning.export.hf import PROJECT_KEY
from gpt2_lightning.export.run import Run
from gpt2_lightning.io import read_json
from gpt2_lightning.model.gpt import GPTModel
from gpt2_lightning.model.pretrained import load_pretrained
from gpt2_lightning.train.checkpoints import model_from_checkpoint, read_checkpoint


def load_model(spec: str | os.PathLike, cache_dir: str | os.PathLike | None = None
               ) -> tuple[GPTModel, dict[str, Any]]:
    """A model in eval mode and its metadata (``prompt_style``, ``model``) from whatever a user
    has: an export folder, a run directory (its export, else its best or last checkpoint), a
    Lightning ``.ckpt``, or GPT-2 weights (a size name, safetensors file or folder, URL). A file
    this project saved carries its prompt style (one without it is an error naming it); plain
    GPT-2 weights carry none and are prompted in ``DEFAULT_STYLE``, except a folder that
    ``gpt2 export --format hf`` wrote."""
    kind, where = weights_source(spec)
    if kind == "export":
        return load_export(where)
    if kind == "checkpoint":
        return model_from_checkpoint(where)
    model = load_pretrained(spec, cache_dir)
    return model.eval(), {"model": model.cfg.to_dict(), "prompt_style": hf_prompt_style(Path(spec)) or DEFAULT_STYLE}


def weights_source(spec: str | os.PathLike) -> tuple[str, Path | str]:
    """Where ``load_model(spec)`` reads the model: ``("export", folder)``, ``("checkpoint", file)``
    or ``("weights", spec)`` (GPT-2 weights: a size name, a file or folder, a URL)."""
    path = Path(spec)
    if path.is_dir():
        if is_export(path):
            return "export", path
        run = Run(path)
        if is_export(run.export):
            return "export", run.export
        if (checkpoint := run.delivered_checkpoint) is not None:
            return "checkpoint", checkpoint
        if Run.of(path) == run:
            raise FileNotFoundError(f"run {path} holds no weights yet: no export/ and no checkpoints/*.ckpt")
    elif path.suffix == ".ckpt":
        return "checkpoint", path
    return "weights", spec


def prompt_style_of(spec: str | os.PathLike) -> str:
    """The prompt style ``load_model(spec)`` gives its model, read from the metadata alone."""
    kind, where = weights_source(spec)
    if kind == "export":
        style = read_json(Path(where) / CONFIG_FILE, missing=None, invalid=None)
        style = style.get("prompt_style") if isinstance(style, dict) else None
    elif kind == "checkpoint":
        style = read_checkpoint(where)["hyper_parameters"].get("prompt_style")
    else:
        return hf_prompt_style(Path(spec)) or DEFAULT_STYLE
    if not isinstance(style, str):
        raise CheckpointMismatchError(f"{where}: holds no prompt style; it cannot say how to prompt its model")
    return style


def hf_prompt_style(folder: Path) -> str | None:
    """The prompt style that ``gpt2 export --format hf`` recorded in a folder's config.json
    (None for a folder that holds no such export)."""
    config = read_json(folder / "config.json", missing=None, invalid=None)
    if not isinstance(config, dict) or not isinstance(config.get(PROJECT_KEY), dict):
        return None
    style = config[PROJECT_KEY].get("prompt_style")
    if not isinstance(style, str):
        raise CheckpointMismatchError(f"{folder / 'config.json'}: {PROJECT_KEY} holds no prompt_style")
    return style
