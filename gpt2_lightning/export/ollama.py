"""An Ollama model folder: the GGUF file and a ``Modelfile`` with the prompt style's
template, its stop strings and the context length (``ollama create NAME -f Modelfile``)."""

from __future__ import annotations

import json
from pathlib import Path

from gpt2_lightning.data.prompts import PromptStyle
from gpt2_lightning.export.gguf_file import export_gguf
from gpt2_lightning.export.templates import ollama_template
from gpt2_lightning.io import atomic_write
from gpt2_lightning.model.gpt import GPTModel

GGUF_FILE = "model.gguf"
MODELFILE = "Modelfile"


def modelfile(style: PromptStyle, context_length: int) -> str:
    template = ollama_template(style)
    stops = "".join(f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}\n" for stop in style.stop_strings)
    return (f"FROM ./{GGUF_FILE}\n"
            f'TEMPLATE """{template}"""\n'
            f"{stops}"
            f"PARAMETER num_ctx {context_length}\n")


def export_ollama(model: GPTModel, style: PromptStyle, folder: Path, dtype: str = "float32",
                  name: str = "gpt2") -> None:
    export_gguf(model, style, folder / GGUF_FILE, dtype, name=name)
    with atomic_write(folder / MODELFILE) as f:
        f.write(modelfile(style, model.cfg.context_length))
