"""Preference data for DPO: a prompt and two answers to it, one ``chosen``, one ``rejected``.

A record is an Alpaca record (``instruction``, ``input``) or a conversation up to the user's
last turn (``messages``), with the two answers as strings. Read as well: TRL's preference
formats, where ``prompt`` is the instruction or the conversation, and each answer is a list
of messages ending with the assistant's (the conversation before it, if no ``prompt`` gives
it, shared by both).

``PreferenceDataset`` tokenises both answers of every record with the prompt style of SFT and
inference; ``PreferenceCollator`` stacks a batch of B records as ``2B`` rows, the chosen
answers first: one forward pass scores both sides.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from gpt2_lightning.data.dataset import IGNORE_INDEX, InstructionCollator, tokenise
from gpt2_lightning.data.prompts import DEFAULT_STYLE, PromptStyle, get_style
from gpt2_lightning.data.records import (
    FieldNames,
    Record,
    json_type,
    prompt_of,
    validate_alpaca,
    validate_conversation,
)
from gpt2_lightning.errors import DataError
from gpt2_lightning.model.tokenizer import EOT_ID

log = logging.getLogger(__name__)

ANSWERS = ("chosen", "rejected")


def validate_preference(item, path: Path | str, number: int, fields: FieldNames = FieldNames()) -> Record:
    """``item`` as a canonical preference (an Alpaca record or ``messages`` ending with the
    user's turn, plus ``chosen`` and ``rejected`` strings, its other fields kept), or a
    ``DataError`` naming the file, the record, the turn and the field."""
    where = f"{path}: record {number}"
    keys = (fields.chosen, fields.rejected)
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected an object with '{keys[0]}' and '{keys[1]}', got a JSON {json_type(item)}")
    answers, histories = [], []
    for key in keys:
        if key not in item:
            raise DataError(f"{where}: missing field '{key}'")
        answer, history = _answer(item[key], f"{where}, field '{key}'")
        answers.append(answer)
        histories.append(history)
    rest = {k: v for k, v in item.items() if k not in keys}
    prompt_key = next((k for k in ("messages", "prompt") if isinstance(item.get(k), list)), None)
    if prompt_key is None and histories[0]:  # the conversation comes with the answers
        if histories[0] != histories[1]:
            raise DataError(f"{where}: fields '{keys[0]}' and '{keys[1]}' must hold the same conversation "
                            f"before their last answer")
        rest, prompt_key = {**rest, "messages": histories[0]}, "messages"
    if prompt_key is not None:
        record = validate_conversation(rest, path, number, "messages", key=prompt_key, answered=False)
    else:
        if fields.instruction not in rest and isinstance(rest.get("prompt"), str):
            rest = {fields.instruction: rest.pop("prompt"), **rest}
        record = validate_alpaca(rest, where, fields, with_output=False)
    return {**record, "chosen": answers[0], "rejected": answers[1]}


def same_answers(records: Sequence[Record]) -> list[int]:
    """The numbers (from 1) of the records whose chosen and rejected answers are the same text:
    such a pair adds nothing to the loss's gradient (the reference's own file has six)."""
    return [number for number, r in enumerate(records, start=1) if r["chosen"].strip() == r["rejected"].strip()]


def _answer(value, where: str) -> tuple[str, list | None]:
    """An answer field's text, and the conversation before it when the field is a list of messages."""
    if isinstance(value, list):
        if not value:
            raise DataError(f"{where}: the list of messages is empty")
        for turn_number, turn in enumerate(value, start=1):
            if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or \
                    not isinstance(turn.get("content"), str):
                raise DataError(f"{where}, turn {turn_number}: expected an object with 'role' and 'content' strings")
        if value[-1]["role"] != "assistant":
            raise DataError(f"{where}, turn {len(value)}: the answer must be an assistant turn, "
                            f"got role {value[-1]['role']!r}")
        text, history = value[-1]["content"], [{"role": t["role"], "content": t["content"]} for t in value[:-1]]
    elif isinstance(value, str):
        text, history = value, None
    else:
        raise DataError(f"{where}: must be a string or a list of messages, got a JSON {json_type(value)}")
    if not text.strip():
        raise DataError(f"{where}: the answer is empty")
    return text, history


def preference_pieces(record: Record, style: PromptStyle) -> list[list[tuple[str, bool]]]:
    """The chosen and the rejected example of a preference: its prompt (as one text, as the
    model is prompted), then the answer, the only scored piece (with the end-of-text that
    ``tokenise`` closes it with)."""
    prompt = prompt_of(record, style)
    return [[(prompt, False), (record[answer], True)] for answer in ANSWERS]


class PreferenceDataset(Dataset):
    """Preferences tokenised once: record ``i``'s chosen example is example ``2i`` of the flat
    arrays (as ``InstructionDataset`` holds them), its rejected one ``2i + 1``.

    ``fit(max_length)`` makes every pair fit ``max_length`` input positions: a prompt too long
    is cut from the left (the answer stays whole, every row keeps its scored tokens), and a
    record whose answer alone does not fit is left out. ``reference`` holds the reference
    model's log-probabilities of each record's chosen and rejected answer, once computed.
    """

    def __init__(self, records: Sequence[Record], style: str | PromptStyle = DEFAULT_STYLE,
                 tokens: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None, max_length: int | None = None):
        self.records = list(records)
        self.style = get_style(style)
        self.ids, self.scored, self.offsets = tokens if tokens is not None else \
            tokenise([example for r in self.records for example in preference_pieces(r, self.style)])
        self.reference: np.ndarray | None = None
        self.max_length: int | None = None
        self.kept = np.arange(len(self.records))
        self.cuts = np.zeros(2 * len(self.records), dtype=np.int64)
        self.fit(max_length)

    def fit(self, max_length: int | None) -> tuple[int, int]:
        """Fit every pair to ``max_length`` inputs; the number of prompts cut and of records left out."""
        if max_length == self.max_length:
            return 0, 0
        self.max_length = max_length
        lengths = np.diff(self.offsets)
        if max_length is None:
            self.cuts[:] = 0
            self.kept = np.arange(len(self.records))
        else:
            # An example of n tokens is n - 1 inputs; at least one prompt token must stay in front of the answer.
            self.cuts = np.maximum(0, lengths - (max_length + 1))
            prompt_lengths = np.array([np.argmax(self.scored[start:end]) for start, end in
                                       zip(self.offsets[:-1], self.offsets[1:])], dtype=np.int64)
            fits = (self.cuts <= prompt_lengths - 1).reshape(-1, 2).all(axis=1)
            self.kept = np.flatnonzero(fits)
        kept_lengths = (lengths - self.cuts).reshape(-1, 2)[self.kept]
        self.lengths = kept_lengths.max(axis=1).tolist() if len(self.kept) else []
        cut = int((self.cuts.reshape(-1, 2)[self.kept] > 0).any(axis=1).sum())
        return cut, len(self.records) - len(self.kept)

    def example(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Example ``index`` of the flat arrays (``2i``: record ``i``'s chosen answer), as fitted."""
        start, end = self.offsets[index] + self.cuts[index], self.offsets[index + 1]
        return self.ids[start:end], self.scored[start:end]

    def __len__(self) -> int:
        return len(self.kept)

    def __getitem__(self, index: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray],
                                               np.ndarray | None]:
        record = int(self.kept[index])
        reference = self.reference[record] if self.reference is not None else None
        return self.example(2 * record), self.example(2 * record + 1), reference


@dataclass
class PreferenceCollator:
    """A batch of B preferences as ``input_ids`` and ``targets [2B, T]``: the chosen answers in
    the first B rows, the rejected in the last B, padded and masked as ``InstructionCollator``
    does (only the answer and its end-of-text scored); with the reference's log-probabilities,
    ``reference_logps [2B]`` in the same order."""

    max_length: int | None = None
    pad_id: int = EOT_ID
    ignore_index: int = IGNORE_INDEX

    def __call__(self, batch: Sequence[tuple]) -> dict[str, torch.Tensor]:
        rows = [chosen for chosen, _, _ in batch] + [rejected for _, rejected, _ in batch]
        out = InstructionCollator(self.max_length, self.pad_id, self.ignore_index)(rows)
        if batch[0][2] is not None:
            reference = np.stack([r for _, _, r in batch]).astype(np.float32)  # [B, 2]
            out["reference_logps"] = torch.from_numpy(np.ascontiguousarray(reference.T.reshape(-1)))
        return out
