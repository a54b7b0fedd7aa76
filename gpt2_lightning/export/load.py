"""``load_model``: a model ready to generate from anything a user has."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gpt2_lightning.export.card import find_run_dir
from gpt2_lightning.export.folder import is_export, load_export
from gpt2_lightning.export.hf import PROJECT_KEY
from gpt2_lightning.model.gpt import GPTModel
from gpt2_lightning.model.pretrained import load_pretrained
from gpt2_lightning.train.checkpoints import model_from_checkpoint, run_checkpoint


def load_model(spec: str | os.PathLike, cache_dir: str | os.PathLike | None = None
               ) -> tuple[GPTModel, dict[str, Any]]:
    """A model in eval mode and its metadata (``prompt_style``) from whatever a user has:
    an export folder, a run directory (its export, else its best or last checkpoint), a
    Lightning ``.ckpt``, or GPT-2 weights (a size name, safetensors file or folder, URL;
    these have no prompt style of their own and get ``alpaca``, except a folder that
    ``export_to`` wrote in Hugging Face's format)."""
    path = Path(spec)
    if path.is_dir():
        for folder in (path, path / "export"):
            if is_export(folder):
                return load_export(folder)
        if (checkpoint := run_checkpoint(path)) is not None:
            return model_from_checkpoint(checkpoint)
        if find_run_dir(path) == path:
            raise FileNotFoundError(f"run {path} holds no weights yet: no export/ and no checkpoints/*.ckpt")
    elif path.suffix == ".ckpt":
        return model_from_checkpoint(path)
    model = load_pretrained(spec, cache_dir)
    return model.eval(), {"model": model.cfg.to_dict(), "prompt_style": hf_prompt_style(path) or "alpaca"}


def hf_prompt_style(folder: Path) -> str | None:
    """The prompt style that ``gpt2 export --format hf`` recorded in a folder's config.json."""
    try:
        return json.loads((folder / "config.json").read_text())[PROJECT_KEY]["prompt_style"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
