"""Answer a split's instructions with a model and save them as ``responses.json``.

The file is the records with a ``model_response`` field, rewritten atomically after every
answered batch: an interrupted run resumes after the last saved record.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gpt2_lightning.data.prompts import PromptStyle, get_style
from gpt2_lightning.data.records import load_records, prompt_of
from gpt2_lightning.errors import DataError
from gpt2_lightning.generation.engine import BatchEngine, Generation
from gpt2_lightning.generation.sampling import sampling_generator
from gpt2_lightning.io import write_json
from gpt2_lightning.model.gpt import GPTModel
from gpt2_lightning.model.tokenizer import decode, encode


@dataclass
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    batch_size: int = 8
    seed: int = 123


def answer_batch(model: GPTModel, records: Sequence[dict], style: str | PromptStyle = "alpaca",
                 settings: GenerationSettings = GenerationSettings(),
                 generator: torch.Generator | None = None) -> list[str]:
    """The model's extracted answers to ``records``, generated together by a ``BatchEngine``
    of ``settings.batch_size`` rows (each answer is what the prompt would get alone)."""
    style = get_style(style)
    keep = max(1, model.cfg.context_length - settings.max_new_tokens)  # room to answer
    prompts = [encode(prompt_of(record, style))[-keep:] for record in records]
    if not prompts:
        return []
    answers: list[list[int]] = [[] for _ in prompts]
    done = threading.Semaphore(0)
    length = min(model.cfg.context_length, max(map(len, prompts)) + settings.max_new_tokens)
    with BatchEngine(model, settings.batch_size, max_queue=len(prompts), max_length=length) as engine:
        for ids, answer in zip(prompts, answers):
            engine.submit(Generation(ids, settings.max_new_tokens, on_token=answer.append,
                                     on_finish=lambda reason: done.release(), temperature=settings.temperature,
                                     top_k=settings.top_k, top_p=settings.top_p, generator=generator))
        for _ in prompts:
            done.acquire()
    return [style.answer(decode(ids)) for ids in answers]


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _finished_prefix(path: Path, records: Sequence[dict]) -> list[dict]:
    """Answered records of an earlier, interrupted run of the same records."""
    done = _read_json(path)
    if not isinstance(done, list):
        return []
    prefix = []
    for old, new in zip(done, records):
        if not isinstance(old, dict) or "model_response" not in old or \
                {k: v for k, v in old.items() if k != "model_response"} != new:
            break
        prefix.append(old)
    return prefix


def weights_sha256(model: torch.nn.Module) -> str:
    """The identity of ``model``'s weights as they are (dtype included): a hash of every tensor."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy())
    return digest.hexdigest()


def answer_identity(model: GPTModel, style: PromptStyle, settings: GenerationSettings) -> dict:
    """What the answers depend on: the weights, the prompt style and the sampling settings
    (not the batch size: a left-padded batch answers each prompt as it would be alone)."""
    return {"weights_sha256": weights_sha256(model), "prompt_style": style.name,
            "settings": {k: v for k, v in asdict(settings).items() if k != "batch_size"}}


def identity_path(path: Path) -> Path:
    """Where the identity of the answers in ``path`` is kept: ``responses.json`` -> ``responses.meta.json``."""
    return path.with_name(f"{path.stem}.meta.json")


def respond(model: GPTModel, records: Sequence[dict], path: str | os.PathLike,
            style: str | PromptStyle = "alpaca", settings: GenerationSettings = GenerationSettings(),
            progress: bool = True) -> list[dict]:
    """Answer ``records`` into ``path``; return the answered records.

    Answers already in ``path`` are kept, and an interrupted file is resumed, only when they
    were given by the same weights, prompt style and settings (``answer_identity``, kept in
    ``identity_path(path)``) to the same records; otherwise every record is answered anew.
    The file is rewritten atomically after every batch.
    """
    path, style = Path(path), get_style(style)
    identity = answer_identity(model, style, settings)
    meta = identity_path(path)
    results = _finished_prefix(path, records) if _read_json(meta) == identity else []
    if not results:
        meta.unlink(missing_ok=True)  # until it is written again, nothing in path is trusted
    todo = records[len(results):]
    with tqdm(total=len(records), initial=len(results), desc="responses", disable=not progress) as bar:
        for start in range(0, len(todo), settings.batch_size):
            batch = todo[start:start + settings.batch_size]
            # Seeded by the batch's place, so that a resumed file samples what an uninterrupted one would.
            generator = sampling_generator(model, settings.temperature, settings.seed + len(results))
            answers = answer_batch(model, batch, style, settings, generator)
            results += [{**record, "model_response": text} for record, text in zip(batch, answers)]
            _save(path, results, meta, identity)  # every batch: an interruption loses one batch at most
            bar.update(len(batch))
    if not todo:
        _save(path, results, meta, identity)
    return results


def _save(path: Path, results: list[dict], meta: Path, identity: dict) -> None:
    write_json(path, results)
    if not meta.is_file():
        write_json(meta, identity)


def read_instructions(path: Path) -> list[dict]:
    """Records to answer: a JSON / JSONL file of records, or plain text with one
    instruction per line (custom instructions)."""
    if path.suffix in (".json", ".jsonl"):
        return load_records(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    records = [{"instruction": line.strip(), "input": "", "output": ""} for line in lines if line.strip()]
    if not records:
        raise DataError(f"{path}: no instructions (one per line)")
    return records
