"""Generated text streamed piece by piece, cut at stop strings (chat and serve)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from gpt2_lightning.data.prompts import cut_at_stop
from gpt2_lightning.generation.sampling import stream_tokens
from gpt2_lightning.model.gpt import GPTModel
from gpt2_lightning.model.tokenizer import EOT_ID, decode


class TextStream:
    """Generated text in pieces, as tokens arrive, cut at the first stop string.

    Text that might be the start of a stop string is held back until it is known not to
    be, and a piece never ends inside a multi-byte character. After iteration,
    ``finish_reason`` is ``"stop"`` (end-of-text or a stop string) or ``"length"``, and
    ``text`` / ``n_tokens`` describe the whole answer.
    """

    def __init__(self, model: GPTModel, prompt_ids: Sequence[int], max_new_tokens: int,
                 temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                 stop: Sequence[str] = (), generator: torch.Generator | None = None):
        self.model = model
        self.prompt_ids = list(prompt_ids)
        self.max_new_tokens = max_new_tokens
        self.sampling = (temperature, top_k, top_p)
        self.stop = tuple(s for s in stop if s)
        self.generator = generator
        self.text = ""
        self.n_tokens = 0
        self.finish_reason: str | None = None

    def __iter__(self) -> Iterator[str]:
        device = next(self.model.parameters()).device
        idx = torch.tensor([self.prompt_ids], device=device)
        new: list[int] = []
        self.finish_reason = "length"
        for token in stream_tokens(self.model, idx, self.max_new_tokens, *self.sampling, generator=self.generator):
            token = int(token)
            if token == EOT_ID:
                self.finish_reason = "stop"
                break
            new.append(token)
            self.n_tokens = len(new)
            text, stopped = cut_at_stop(decode(new).lstrip(), self.stop)
            if stopped:
                self.finish_reason = "stop"
                yield from self._advance_to(text)
                return
            if not text.endswith("\ufffd"):  # else half a character: wait for its other bytes
                yield from self._advance_to(text[:len(text) - self._held_back(text)])
        yield from self._advance_to(cut_at_stop(decode(new).lstrip(), self.stop)[0])

    def _advance_to(self, text: str) -> Iterator[str]:
        """Yield what ``text`` adds to the text shown so far."""
        if len(text) > len(self.text):
            piece, self.text = text[len(self.text):], text
            yield piece

    def _held_back(self, text: str) -> int:
        return max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
