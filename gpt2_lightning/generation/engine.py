"""``BatchEngine``: one model decoding many sequences together (continuous batching).

Sequences join the running batch at the next step and leave it, freeing their slot, when
they finish; each has its own sampling settings, token limit, deadline and cancellation.
All rows share one KV cache whose filled length ``L`` advances by one per step: a row's
prompt sits right-aligned at ``L`` with its left padding masked out of attention and
positions, so every row computes what it would alone. A prompt
longer than ``L`` shifts the others right; when ``L`` reaches the end of the cache, the
rows shift left by the padding they all have.

Generation runs on one thread of its own; ``submit`` may be called from any thread.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from gpt2_lightning.generation.prefix_cache import PrefixCache, positions_in
from gpt2_lightning.generation.sampling import SamplingParams, adjusted_logits, sample_next
from gpt2_lightning.model.gpt import GPTModel, KVCache
from gpt2_lightning.model.tokenizer import EOT_ID


class QueueFull(Exception):
    """The engine's queue holds as many sequences as it may; try again later."""


class TokenConstraint(Protocol):
    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits [1, vocab]`` with the tokens not allowed next at -inf."""

    def accept(self, token: int) -> None:
        """``token`` was chosen."""


@dataclass(eq=False)
class Generation:
    """One sequence to generate. ``on_token(id)`` receives each new token id and
    ``on_finish(reason)`` is called once at the end, both on the engine's thread: reason is
    ``"stop"`` (end-of-text), ``"length"`` (``params.max_new_tokens``), ``"cancelled"``,
    ``"time_limit"`` or ``"error"``."""

    prompt_ids: Sequence[int]
    params: SamplingParams
    """Its sampling settings and ``max_new_tokens`` (stop strings are the consumer's: ``TextStream``)."""
    on_token: Callable[[int], None]
    on_finish: Callable[[str], None]
    generator: torch.Generator | None = None
    deadline: float | None = None
    """``time.monotonic()`` after which the sequence ends with ``"time_limit"``."""
    top_logprobs: int | None = None
    """None: no log-probabilities; k: before each ``on_token``, ``logprobs`` gains the token's
    log-probability and the k most likely tokens with theirs (the model's distribution, before
    the sampling settings reshape it)."""
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    constraint: TokenConstraint | None = None
    """Masks the tokens the answer may not take next (structured output: ``JsonConstraint``)."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    n_generated: int = 0
    answer_ids: list[int] = field(default_factory=list)
    """The tokens chosen so far, end-of-text included."""
    last_token: int = 0
    finish_reason: str | None = None

    def cancel(self) -> None:
        """End the sequence at the engine's next step."""
        self.cancelled.set()


@dataclass(frozen=True)
class TokenLogprobs:
    """A generated token's log-probability and the most likely tokens at its position."""

    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def token_logprobs(logits: torch.Tensor, token: int, top: int) -> TokenLogprobs:
    """``token``'s log-probability under ``logits [1, vocab]`` and the ``top`` most likely tokens."""
    logprobs = logits.float().log_softmax(dim=-1)[0]
    best = logprobs.topk(top) if top else None
    return TokenLogprobs(float(logprobs[token]), tuple(zip(best.indices.tolist(), best.values.tolist())) if best else ())


class BatchEngine:
    def __init__(self, model: GPTModel, max_batch_size: int = 8, max_queue: int = 64,
                 max_length: int | None = None, eos_id: int = EOT_ID, prefix_cache_mb: float = 0.0):
        """``max_length``: positions of the shared cache (default: the context length); a
        prompt and its answer must fit in it. ``prefix_cache_mb``: keep the keys and values of
        finished sequences in up to this much memory, and prefill a new prompt only after the
        longest kept prefix it begins with (0: keep none)."""
        self.model = model.eval()
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.eos_id = eos_id
        param = next(model.parameters())
        self.device = param.device
        self.cache = KVCache(model.cfg, max_batch_size, max_length, device=param.device, dtype=param.dtype,
                             pad_lengths=torch.zeros(max_batch_size, dtype=torch.long))
        self.prefixes = PrefixCache(positions_in(prefix_cache_mb, model.cfg.n_layers, model.cfg.emb_dim, param.dtype)) \
            if prefix_cache_mb else None
        self.rows: list[Generation] = []
        self.waiting: collections.deque[Generation] = collections.deque()
        self.generated_tokens = 0
        self.prefilled_tokens = 0  # prompt positions computed (not those a kept prefix or a twin prompt gave)
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="batch-engine", daemon=True)
        self._thread.start()

    # --- the caller's side -----------------------------------------------------------------

    def submit(self, seq: Generation, block: bool = False) -> Generation:
        """Queue ``seq``; ``QueueFull`` when ``max_queue`` sequences wait already (unless ``block``)."""
        return self.submit_all([seq], block)[0]

    def submit_all(self, seqs: Sequence[Generation], block: bool = False) -> Sequence[Generation]:
        """Queue ``seqs`` together (admitted at the same step where rows allow: those with one
        prompt prefill it once), or none of them: ``QueueFull`` when they do not all fit in the
        queue (unless ``block``: then wait until they do)."""
        limit = self.cache.max_length
        for seq in seqs:
            if not 0 < len(seq.prompt_ids) < limit:
                raise ValueError(f"a prompt needs 1 to {limit - 1} tokens, got {len(seq.prompt_ids)}")
        for seq in seqs:
            seq.params = seq.params.with_(max_new_tokens=min(seq.params.max_new_tokens, limit - len(seq.prompt_ids)))
        with self._wake:
            while block and len(self.waiting) + len(seqs) > max(self.max_queue, len(seqs)) and not self._closed:
                self._wake.wait()
            if len(self.waiting) + len(seqs) > max(self.max_queue, len(seqs)):
                raise QueueFull(f"{len(self.waiting)} requests are waiting already")
            self.waiting.extend(seqs)
            self._wake.notify_all()
        return seqs

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def batch_size(self) -> int:
        return len(self.rows)

    def close(self) -> None:
        """Stop the engine thread; what still runs or waits ends as ``"cancelled"``."""
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        self._thread.join()
        for seq in [*self.rows, *self.waiting]:
            seq.on_finish("cancelled")
        self.rows, self.waiting = [], collections.deque()

    def __enter__(self) -> BatchEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the engine's thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self.waiting and not self.rows and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                admitted = []
                while self.waiting and len(self.rows) + len(admitted) < self.max_batch_size:
                    admitted.append(self.waiting.popleft())
                self._wake.notify_all()  # room in the queue for blocked submitters
            with torch.inference_mode():
                prefilled: dict = {}
                for seq in admitted:
                    try:
                        self._admit(seq, prefilled)
                    except Exception:  # one bad sequence ends alone; the batch goes on
                        seq.finish_reason = "error"
                        if seq not in self.rows:
                            seq.on_finish("error")
                self._drop_finished()
                if self.rows:
                    self._step()
                    self._drop_finished()

    def _admit(self, seq: Generation, prefilled: dict[tuple[int, ...], tuple[KVCache, torch.Tensor]]) -> None:
        """Prefill ``seq``'s prompt alone (once for the sequences admitted together with the same
        prompt: ``prefilled``), put its keys and values into a free row, emit its first token."""
        if seq.cancelled.is_set():
            seq.on_finish("cancelled")
            return
        ids = tuple(seq.prompt_ids)
        if ids not in prefilled:
            prefilled[ids] = self._prefill(list(ids))
        own, logits = prefilled[ids]
        length = self.cache.length if self.rows else 0
        if len(seq.prompt_ids) > length:
            self._shift(len(seq.prompt_ids) - length)
            length = self.cache.length
        row, start = len(self.rows), length - len(seq.prompt_ids)
        for layer in range(self.model.cfg.n_layers):
            self.cache.keys[layer][row, :, start:length] = own.keys[layer][0]
            self.cache.values[layer][row, :, start:length] = own.values[layer][0]
        self.cache.pad_lengths[row] = start
        self.cache.length = length
        self.rows.append(seq)
        self._emit(seq, logits)

    def _prefill(self, ids: list[int]) -> tuple[KVCache, torch.Tensor]:
        """The keys and values of the prompt ``ids`` and the logits after it; only what follows
        the longest kept prefix is computed."""
        own = self.model.new_cache(1, len(ids))
        reused = self.prefixes.longest(ids) if self.prefixes is not None else None
        if reused is not None:
            own.length, keys, values = reused
            for layer in range(self.model.cfg.n_layers):
                own.keys[layer][0, :, :own.length] = keys[layer]
                own.values[layer][0, :, :own.length] = values[layer]
        self.prefilled_tokens += len(ids) - own.length
        return own, self.model(torch.tensor([ids[own.length:]], device=self.device), own)[:, -1]

    def _shift(self, offset: int) -> None:
        """Move every row's keys and values ``offset`` positions (right if positive) and grow
        or shrink their padding and the filled length to match."""
        n, length = len(self.rows), self.cache.length
        if n:
            for tensors in (self.cache.keys, self.cache.values):
                for t in tensors:
                    moved = t[:n, :, max(0, -offset):length].clone()
                    t[:n, :, max(0, offset):max(0, offset) + moved.shape[2]] = moved
            self.cache.pad_lengths[:n] += offset
        self.cache.length = length + offset

    def _step(self) -> None:
        """One token for every row."""
        if self.cache.length == self.cache.max_length:  # every row still running has left padding
            self._shift(-int(self.cache.pad_lengths[:len(self.rows)].min()))
        n = len(self.rows)
        view = self.cache.rows(n)
        tokens = torch.tensor([[seq.last_token] for seq in self.rows], device=self.device)
        logits = self.model(tokens, view)[:, -1]
        self.cache.length = view.length
        for i, seq in enumerate(self.rows):
            try:
                self._emit(seq, logits[i:i + 1])
            except Exception:  # a consumer that failed ends its own sequence only
                seq.finish_reason = "error"

    def _emit(self, seq: Generation, logits: torch.Tensor) -> None:
        shaped = adjusted_logits(logits, seq.params, seq.prompt_ids, seq.answer_ids, self.eos_id) \
            if seq.params.reshapes_logits else logits
        if seq.constraint is not None:
            shaped = seq.constraint.mask(shaped)
        token = int(sample_next(shaped, seq.params, seq.generator))
        if seq.constraint is not None:
            seq.constraint.accept(token)
        seq.last_token = token
        if seq.top_logprobs is not None:
            seq.logprobs.append(token_logprobs(logits, token, seq.top_logprobs))
        seq.answer_ids.append(token)
        if token == self.eos_id:
            seq.finish_reason = "stop"
            return
        seq.n_generated += 1
        self.generated_tokens += 1
        seq.on_token(token)
        if seq.n_generated >= seq.params.max_new_tokens:
            seq.finish_reason = "length"

    def _keep_prefix(self, row: int, seq: Generation) -> None:
        """Keep the keys and values the row computed: its prompt and the tokens fed after it."""
        start = int(self.cache.pad_lengths[row])
        ids = [*seq.prompt_ids, *seq.answer_ids][:self.cache.length - start]
        self.prefixes.add(ids, [k[row, :, start:start + len(ids)] for k in self.cache.keys],
                          [v[row, :, start:start + len(ids)] for v in self.cache.values])

    def _drop_finished(self) -> None:
        """End the rows that finished, were cancelled or ran out of time; move the last rows
        into the freed slots so that the running rows stay the first ones."""
        now = time.monotonic()
        kept = []
        for row, seq in enumerate(self.rows):
            reason = seq.finish_reason
            if reason is None and seq.cancelled.is_set():
                reason = "cancelled"
            elif reason is None and seq.deadline is not None and now >= seq.deadline:
                reason = "time_limit"
            if reason is None:
                kept.append(row)
            else:
                seq.finish_reason = reason
                if self.prefixes is not None and reason != "error":
                    self._keep_prefix(row, seq)
                seq.on_finish(reason)
        if kept != list(range(len(kept))):  # a row before a running one finished: close the gap
            index = torch.tensor(kept, device=self.device)
            for tensors in (self.cache.keys, self.cache.values):
                for t in tensors:
                    t[:len(kept)] = t[index]
            self.cache.pad_lengths[:len(kept)] = self.cache.pad_lengths[index]
        self.rows = [self.rows[row] for row in kept]
        if not kept:
            self.cache.length = 0
