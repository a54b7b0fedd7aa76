"""``export_to``: a model in the format another tool loads, written whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path

from gpt2_lightning.data.prompts import get_style
from gpt2_lightning.errors import ConfigError
from gpt2_lightning.export.card import model_card, read_run_summary
from gpt2_lightning.export.gguf_file import GGUF_DTYPES, export_gguf
from gpt2_lightning.export.hf import TORCH_DTYPES, export_hf
from gpt2_lightning.export.load import load_model
from gpt2_lightning.export.ollama import GGUF_FILE, export_ollama
from gpt2_lightning.export.peft_adapter import export_peft_adapter
from gpt2_lightning.io import atomic_folder, atomic_write

FORMAT_DTYPES = {"hf": tuple(TORCH_DTYPES), "gguf": GGUF_DTYPES, "ollama": GGUF_DTYPES}


def check_request(fmt: str, dtype: str, out: Path, force: bool, adapter_only: bool = False) -> None:
    """Refuse, before any work, what cannot be done or would replace the user's files."""
    if adapter_only and fmt != "hf":
        raise ConfigError(f"--adapter-only writes a PEFT adapter for Hugging Face: use it with --format hf, not {fmt}")
    if fmt not in FORMAT_DTYPES:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMAT_DTYPES)}")
    if dtype not in FORMAT_DTYPES[fmt]:
        raise ConfigError(f"--dtype {dtype} does not exist for {fmt}; choose one of {', '.join(FORMAT_DTYPES[fmt])}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(f"--out {out} exists and is not empty; choose another folder or pass --force to replace it")


def export_to(spec: str | os.PathLike, fmt: str, out: str | os.PathLike, dtype: str = "float32",
              force: bool = False, adapter_only: bool = False) -> Path:
    """Export the model ``spec`` names (anything ``load_model`` takes; a LoRA run with its
    adapters merged) as ``fmt`` (``hf``, ``gguf`` or ``ollama``) into the folder ``out``;
    return the folder. ``adapter_only``: a LoRA run's adapters alone, for ``peft``."""
    out = Path(out)
    check_request(fmt, dtype, out, force, adapter_only)
    if adapter_only:
        with atomic_folder(out) as folder:
            export_peft_adapter(spec, folder)
        return out
    model, meta = load_model(spec)
    style = get_style(meta["prompt_style"])
    name = out.resolve().name
    with atomic_folder(out) as folder:
        if fmt == "hf":
            export_hf(model, style, folder, dtype)
            with atomic_write(folder / "README.md") as f:
                f.write(model_card(model, style, read_run_summary(spec), name))
        elif fmt == "gguf":
            export_gguf(model, style, folder / GGUF_FILE, dtype, name=name)
        else:
            export_ollama(model, style, folder, dtype, name=name)
    return out
