"""Generated text piece by piece, cut at stop strings; and a ``BatchEngine`` generation
consumed that way (chat, respond, serve)."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator, Sequence

import torch

from gpt2_lightning.data.prompts import cut_at_stop
from gpt2_lightning.generation.engine import BatchEngine, Generation
from gpt2_lightning.generation.sampling import SamplingParams
from gpt2_lightning.model.tokenizer import decode


class TextStream:
    """The text of generated tokens, given one token at a time, cut at the first stop string.

    Text that might be the start of a stop string is held back until it is known not to
    be, and a piece never ends inside a multi-byte character. Once generation ends,
    ``finish_reason`` is ``"stop"`` (end-of-text or a stop string), ``"length"`` or the
    engine's other reasons, and ``text`` / ``n_tokens`` describe the whole answer. An answer's
    leading and trailing whitespace is dropped, as chat shows it (whitespace is held back until
    text follows it); a continuation (``answer=False``) keeps it.
    """

    def __init__(self, prompt_ids: Sequence[int], stop: Sequence[str] = (), answer: bool = True):
        self.prompt_ids = list(prompt_ids)
        self.stop = tuple(s for s in stop if s)
        self.answer = answer
        self.text = ""
        self.n_tokens = 0
        self.finish_reason: str | None = None
        self._ids: list[int] = []

    def push(self, token: int) -> str:
        """Add a generated token; return the text it adds (maybe none yet). After a stop
        string, ``finish_reason`` is ``"stop"`` and later tokens add nothing."""
        if self.finish_reason is not None:
            return ""
        self._ids.append(token)
        self.n_tokens = len(self._ids)
        text, stopped = cut_at_stop(self._decoded(), self.stop)
        if stopped:
            self.finish_reason = "stop"
            return self._advance_to(text.rstrip() if self.answer else text)
        if text.endswith("\ufffd"):  # half a character: wait for its other bytes
            return ""
        trailing = len(text) - len(text.rstrip()) if self.answer else 0
        return self._advance_to(text[:len(text) - max(trailing, self._held_back(text))])

    @property
    def token_ids(self) -> list[int]:
        """The tokens generated so far."""
        return self._ids

    def feed(self, item: int | tuple[str, str]) -> str:
        """Take what the engine sent (``generation_for``): a token, or the end and its reason."""
        if not isinstance(item, tuple):
            return self.push(item)
        if item[1] == "error":
            raise GenerationFailed("generating the answer failed")
        return self.end(item[1])

    def end(self, reason: str) -> str:
        """Generation ended for ``reason``; return the text held back until now."""
        if self.finish_reason is not None:
            return ""
        self.finish_reason = reason
        text = cut_at_stop(self._decoded(), self.stop)[0]
        return self._advance_to(text.rstrip() if self.answer else text)

    def _decoded(self) -> str:
        text = decode(self._ids)
        return text.lstrip() if self.answer else text

    def _advance_to(self, text: str) -> str:
        """What ``text`` adds to the text shown so far."""
        if len(text) <= len(self.text):
            return ""
        piece, self.text = text[len(self.text):], text
        return piece

    def _held_back(self, text: str) -> int:
        return max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


class GenerationFailed(RuntimeError):
    """The engine ended a sequence with an error."""


def generation_for(stream: TextStream, deliver: Callable[[object], None], params: SamplingParams,
                   generator: torch.Generator | None = None, deadline: float | None = None) -> Generation:
    """The engine sequence of ``stream``'s prompt: ``deliver`` receives each token id, then
    ``("end", reason)``, which ``TextStream.feed`` takes in turn."""
    return Generation(stream.prompt_ids, params, on_token=deliver, on_finish=lambda reason: deliver(("end", reason)),
                      generator=generator, deadline=deadline)


def stream_answer(engine: BatchEngine, stream: TextStream, params: SamplingParams,
                  generator: torch.Generator | None = None) -> Iterator[str]:
    """Generate ``stream``'s answer on ``engine`` (waiting for room in its queue) and yield
    its text in pieces. Leaving early (a stop string, Ctrl-C, closing the iterator) frees
    the sequence's row at the engine's next step."""
    arrived: queue.Queue = queue.Queue()
    seq = generation_for(stream, arrived.put, params, generator)
    engine.submit(seq, block=True)
    try:
        while stream.finish_reason is None:
            if piece := stream.feed(arrived.get()):
                yield piece
    finally:
        seq.cancel()
