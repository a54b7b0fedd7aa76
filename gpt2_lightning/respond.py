"""Answer a split's instructions with a model and save them as ``responses.json``.

The file is the records with a ``model_response`` field, rewritten atomically after every
answered batch: an interrupted run resumes after the last saved record.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gpt2_lightning.generation import generate
from gpt2_lightning.io import write_json
from gpt2_lightning.model import GPTModel
from gpt2_lightning.prompts import PromptStyle, get_style
from gpt2_lightning.tokenizer import decode, encode


@dataclass
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    batch_size: int = 8
    seed: int = 123


def answer(model: GPTModel, record: dict, style: str | PromptStyle = "alpaca",
           settings: GenerationSettings = GenerationSettings(),
           generator: torch.Generator | None = None) -> str:
    """The model's extracted answer to one record."""
    style = get_style(style)
    device = next(model.parameters()).device
    prompt_ids = encode(style.prompt(record))[-model.cfg.context_length + 1:]
    idx = torch.tensor([prompt_ids], device=device)
    out = generate(model, idx, settings.max_new_tokens, settings.temperature, settings.top_k,
                   settings.top_p, generator=generator)
    return style.extract(decode(out[0, len(prompt_ids):].tolist()))


def _finished_prefix(path: Path, records: Sequence[dict]) -> list[dict]:
    """Answered records of an earlier, interrupted run of the same records."""
    if not path.is_file():
        return []
    try:
        done = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return []
    if not isinstance(done, list):
        return []
    prefix = []
    for old, new in zip(done, records):
        if not isinstance(old, dict) or "model_response" not in old or \
                {k: v for k, v in old.items() if k != "model_response"} != new:
            break
        prefix.append(old)
    return prefix


def respond(model: GPTModel, records: Sequence[dict], path: str | os.PathLike,
            style: str | PromptStyle = "alpaca", settings: GenerationSettings = GenerationSettings(),
            progress: bool = True) -> list[dict]:
    """Answer ``records`` into ``path`` (resuming a partial file); return the answered records."""
    path = Path(path)
    results = _finished_prefix(path, records)
    generator = None
    if settings.temperature > 0:
        generator = torch.Generator(device=next(model.parameters()).device).manual_seed(settings.seed)
    todo = records[len(results):]
    with tqdm(total=len(records), initial=len(results), desc="responses", disable=not progress) as bar:
        for i, record in enumerate(todo, start=1):
            results.append({**record, "model_response": answer(model, record, style, settings, generator)})
            bar.update(1)
            if i % settings.batch_size == 0 or i == len(todo):
                write_json(path, results)
    if not todo:
        write_json(path, results)
    return results
