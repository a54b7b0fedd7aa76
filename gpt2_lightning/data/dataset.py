"""Records tokenised once, and the collator that pads them into masked next-token batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from gpt2_lightning.data.prompts import PromptStyle, get_style
from gpt2_lightning.data.records import Record
from gpt2_lightning.model.tokenizer import EOT_ID, encode

IGNORE_INDEX = -100


class InstructionDataset(Dataset):
    """Records tokenised once: prompt ids and response ids kept apart."""

    def __init__(self, records: Sequence[Record], style: str | PromptStyle = "alpaca"):
        self.records = list(records)
        self.style = get_style(style)
        self.prompt_ids = [encode(self.style.prompt(r)) for r in self.records]
        self.response_ids = [encode(self.style.response(r)) for r in self.records]
        # Length of the training sequence: prompt, response and the closing <|endoftext|>.
        self.lengths = [len(p) + len(r) + 1 for p, r in zip(self.prompt_ids, self.response_ids)]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[list[int], list[int]]:
        return self.prompt_ids[index], self.response_ids[index]


@dataclass
class InstructionCollator:
    """Pads a batch of (prompt ids, response ids) into next-token inputs and targets.

    Each sequence is prompt + response + ``<|endoftext|>``; inputs drop its last token and
    targets its first. Inputs are padded with ``<|endoftext|>`` (50256), targets with
    ``ignore_index`` (so the loss sees each sequence's end-of-text once, not the padding).
    ``mask_prompt`` ignores the targets that are prompt tokens. Sequences longer than
    ``max_length`` are cut to it.
    """

    max_length: int | None = None
    mask_prompt: bool = False
    pad_id: int = EOT_ID
    ignore_index: int = IGNORE_INDEX

    def __call__(self, batch: Sequence[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        sequences = [prompt + response + [EOT_ID] for prompt, response in batch]
        width = max(len(s) for s in sequences) - 1
        if self.max_length is not None:
            width = min(width, self.max_length)
        inputs = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        targets = torch.full((len(batch), width), self.ignore_index, dtype=torch.long)
        for row, ((prompt, _), seq) in enumerate(zip(batch, sequences)):
            seq = torch.tensor(seq[:width + 1], dtype=torch.long)
            inputs[row, :len(seq) - 1] = seq[:-1]
            targets[row, :len(seq) - 1] = seq[1:]
            if self.mask_prompt:
                targets[row, :len(prompt) - 1] = self.ignore_index
        return {"input_ids": inputs, "targets": targets}
