"""Answer a split's instructions with a model and save them as ``responses.json``.

The file is the records with a ``model_response`` field, rewritten atomically after every
answered batch: an interrupted run resumes after the last saved record.
"""

from __future__ import annotations

import hashlib
import os
import queue
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gpt2_lightning.data.prompts import PromptStyle, get_style
from gpt2_lightning.data.records import load_records, prompt_of
from gpt2_lightning.errors import DataError
from gpt2_lightning.generation.engine import BatchEngine, Generation
from gpt2_lightning.generation.sampling import SamplingParams
from gpt2_lightning.io import read_json, write_json
from gpt2_lightning.model.gpt import GPTModel
from gpt2_lightning.model.tokenizer import decode, encode

DEFAULT_PARAMS = SamplingParams(seed=123)  # greedy, as the reference; the seed for sampling


def answers_as_they_finish(model: GPTModel, records: Sequence[dict], style: PromptStyle,
                           params: SamplingParams = DEFAULT_PARAMS, batch_size: int = 8,
                           generator_for: Callable[[int], torch.Generator | None] = lambda index: None,
                           ) -> Iterator[tuple[int, str]]:
    """``(index, extracted answer)`` for each of ``records``, in the order the answers finish:
    a ``BatchEngine`` of ``batch_size`` rows decodes them, a row taking the next prompt as
    soon as its answer is done (each answer is what its prompt would get alone).
    ``generator_for(index)`` gives each record's random generator when sampling."""
    style = get_style(style)
    keep = max(1, model.cfg.context_length - params.max_new_tokens)  # room to answer
    prompts = [encode(prompt_of(record, style))[-keep:] for record in records]
    if not prompts:
        return
    tokens: list[list[int]] = [[] for _ in prompts]
    finished: queue.Queue = queue.Queue()
    length = min(model.cfg.context_length, max(map(len, prompts)) + params.max_new_tokens)
    with BatchEngine(model, batch_size, max_queue=len(prompts), max_length=length) as engine:
        for index, ids in enumerate(prompts):
            engine.submit(Generation(ids, params, on_token=tokens[index].append,
                                     on_finish=lambda reason, index=index: finished.put((index, reason)),
                                     generator=generator_for(index)))
        for _ in prompts:
            index, reason = finished.get()
            if reason == "error":
                raise RuntimeError(f"generating the answer to record {index} failed")
            yield index, style.answer(decode(tokens[index]))


def answer_batch(model: GPTModel, records: Sequence[dict], style: str | PromptStyle,
                 params: SamplingParams = DEFAULT_PARAMS, batch_size: int = 8,
                 generator: torch.Generator | None = None) -> list[str]:
    """The model's extracted answers to ``records``, in their order (see
    ``answers_as_they_finish``; ``generator``, when sampling, is shared by all)."""
    answers = dict(answers_as_they_finish(model, records, style, params, batch_size, lambda index: generator))
    return [answers[index] for index in range(len(records))]


def _finished_prefix(path: Path, records: Sequence[dict]) -> list[dict]:
    """Answered records of an earlier, interrupted run of the same records."""
    done = read_json(path, missing=None, invalid=None)
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


def answer_identity(model: GPTModel, style: PromptStyle, params: SamplingParams) -> dict:
    """What the answers depend on: the weights, the prompt style and the sampling settings
    (not the batch size: a left-padded batch answers each prompt as it would be alone)."""
    return {"weights_sha256": weights_sha256(model), "prompt_style": style.name,
            "settings": params.to_dict()}


def identity_path(path: Path) -> Path:
    """Where the identity of the answers in ``path`` is kept: ``responses.json`` -> ``responses.meta.json``."""
    return path.with_name(f"{path.stem}.meta.json")


def respond(model: GPTModel, records: Sequence[dict], path: str | os.PathLike, style: str | PromptStyle,
            params: SamplingParams = DEFAULT_PARAMS, batch_size: int = 8, progress: bool = True) -> list[dict]:
    """Answer ``records`` into ``path``; return the answered records.

    Answers already in ``path`` are kept, and an interrupted file is resumed, only when they
    were given by the same weights, prompt style and settings (``answer_identity``, kept in
    ``identity_path(path)``) to the same records; otherwise every record is answered anew.
    The answers are decoded together, a row taking the next record as soon as it is free; the
    file is rewritten atomically whenever ``batch_size`` more records in a row are
    answered.
    """
    path, style = Path(path), get_style(style)
    identity = answer_identity(model, style, params)
    meta = identity_path(path)
    results = _finished_prefix(path, records) if read_json(meta, missing=None, invalid=None) == identity else []
    if not results:
        meta.unlink(missing_ok=True)  # until it is written again, nothing in path is trusted
    todo = records[len(results):]
    done = len(results)
    answers: dict[int, str] = {}
    with tqdm(total=len(records), initial=done, desc="responses", disable=not progress) as bar:
        # Each record's sampling is seeded by its place, so a resumed file samples what an
        # uninterrupted one would, however the rows were scheduled.
        device = next(model.parameters()).device
        for index, text in answers_as_they_finish(model, todo, style, params, batch_size,
                                                  lambda index: params.generator(device, done + index)):
            answers[index] = text
            bar.update(1)
            while len(results) - done in answers:  # the file holds a prefix of the records
                results.append({**todo[len(results) - done], "model_response": answers.pop(len(results) - done)})
                if (len(results) - done) % batch_size == 0 or len(results) == len(records):
                    _save(path, results, meta, identity)  # an interruption loses one batch at most
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
