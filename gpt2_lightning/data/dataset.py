"""Examples tokenised once, and the collator that pads them into masked next-token batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from gpt2_lightning.data.prompts import DEFAULT_STYLE, PromptStyle, get_style
from gpt2_lightning.data.records import Record, answered
from gpt2_lightning.errors import ConfigError
from gpt2_lightning.model.tokenizer import EOT_ID, EOT_TOKEN, get_tokenizer

IGNORE_INDEX = -100
TRAIN_ON = ("assistant", "all")


def example_pieces(record: Record, style: PromptStyle, mask_prompt: bool = False,
                   train_on: str = "assistant") -> list[tuple[str, bool]]:
    """The text of one training example in pieces, each with whether its tokens are scored.
    An Alpaca record is its prompt (scored unless ``mask_prompt``) and its response; a
    conversation is scored on its answers and their turn ends (``train_on="assistant"``) or
    on everything (``"all"``). A preference trains on its chosen answer."""
    record = answered(record)
    if "messages" not in record:
        return [(style.prompt(record), not mask_prompt), (style.response(record), True)]
    # Neighbours of the same side are tokenised together, as a prompt is when the model answers it.
    merged: list[tuple[str, bool]] = []
    for text, own in style.segments(record["messages"]):
        if merged and merged[-1][1] == own:
            merged[-1] = (merged[-1][0] + text, own)
        else:
            merged.append((text, own))
    return [(text, own or train_on == "all") for text, own in merged]


def tokenise(examples: Sequence[Sequence[tuple[str, bool]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Examples given as text pieces (each with whether its tokens are scored), each closed by a
    scored ``<|endoftext|>``, as one flat array of ``uint16`` token ids, one of ``bool`` (scored)
    and the examples' ``int64`` offsets into them. Each piece is tokenised on its own."""
    texts = [text for example in examples for text, _ in example]
    encoded = iter(get_tokenizer().encode_batch(texts, allowed_special={EOT_TOKEN}))
    ids, scored, lengths = [], [], []
    for example in examples:
        length = 0
        for _, trained in example:
            piece = next(encoded)
            ids.append(np.asarray(piece, dtype=np.uint16))
            scored.append(np.full(len(piece), trained))
            length += len(piece)
        ids.append(np.array([EOT_ID], dtype=np.uint16))
        scored.append(np.array([True]))
        lengths.append(length + 1)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return np.concatenate(ids), np.concatenate(scored), offsets


class InstructionDataset(Dataset):
    """Examples tokenised once, held compactly: each example is its token ids (closed by
    ``<|endoftext|>``) and which of them are scored, one flat ``uint16`` / ``bool`` array
    for all examples."""

    def __init__(self, records: Sequence[Record], style: str | PromptStyle = DEFAULT_STYLE, mask_prompt: bool = False,
                 train_on: str = "assistant", tokens: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None):
        if train_on not in TRAIN_ON:
            raise ConfigError(f"data.train_on must be one of {', '.join(TRAIN_ON)}, got {train_on!r}")
        self.records = list(records)
        self.style = get_style(style)
        self.ids, self.scored, self.offsets = tokens if tokens is not None else \
            tokenise([example_pieces(r, self.style, mask_prompt, train_on) for r in self.records])
        self.lengths = np.diff(self.offsets).tolist()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = self.offsets[index], self.offsets[index + 1]
        return self.ids[start:end], self.scored[start:end]


@dataclass
class InstructionCollator:
    """Pads a batch of examples (token ids ending with ``<|endoftext|>``, and which tokens
    are scored) into next-token inputs and targets.

    Inputs drop each example's last token and targets its first. Inputs are padded with
    ``<|endoftext|>`` (50256), targets with ``ignore_index``, which also stands for every
    target that is not scored (so the loss sees each example's end-of-text once, and a
    masked prompt not at all). Examples longer than ``max_length`` are cut to it.
    """

    max_length: int | None = None
    pad_id: int = EOT_ID
    ignore_index: int = IGNORE_INDEX

    def __call__(self, batch: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, torch.Tensor]:
        width = max(len(ids) for ids, _ in batch) - 1
        if self.max_length is not None:
            width = min(width, self.max_length)
        inputs = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        targets = torch.full((len(batch), width), self.ignore_index, dtype=torch.long)
        for row, (ids, scored) in enumerate(batch):
            ids = torch.from_numpy(np.asarray(ids[:width + 1], dtype=np.int64))
            keep = torch.from_numpy(np.asarray(scored[1:width + 1], dtype=bool))
            inputs[row, :len(ids) - 1] = ids[:-1]
            targets[row, :len(ids) - 1] = ids[1:].masked_fill(~keep, self.ignore_index)
        return {"input_ids": inputs, "targets": targets}
