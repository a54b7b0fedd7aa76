"""Autoregressive sampling from a ``GPTModel``: the sampling settings, greedy / temperature /
top-k / top-p choice of a token, and ``generate`` with a KV cache."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace

import torch

from gpt2_lightning.model.gpt import GPTModel
from gpt2_lightning.model.tokenizer import EOT_ID


@dataclass(frozen=True)
class SamplingParams:
    """How an answer's tokens are chosen and when it ends: one object for ``generate``, the
    batch engine, ``gpt2 respond``, ``gpt2 chat`` and ``gpt2 serve``."""

    max_new_tokens: int = 256
    """The most tokens an answer gets (fewer where the context runs out)."""
    temperature: float = 0.0
    """0: greedy; else the logits are divided by it before sampling."""
    top_k: int | None = None
    """Sample from the k most likely tokens only."""
    top_p: float | None = None
    """Sample from the smallest set of tokens holding this probability mass."""
    seed: int | None = None
    """Seeds the sampling (reproducible answers); None: a fresh seed each time."""
    stop: tuple[str, ...] = ()
    """Strings that end the answer (not included), beside the prompt style's own."""
    presence_penalty: float = 0.0
    """Subtracted from the logit of every token the answer holds already (OpenAI's)."""
    frequency_penalty: float = 0.0
    """Subtracted from a token's logit once per time the answer holds it (OpenAI's)."""
    repetition_penalty: float = 1.0
    """Divides the positive logits and multiplies the negative ones of every token of the prompt
    and the answer (CTRL's, as in transformers and vLLM); 1: none."""
    logit_bias: tuple[tuple[int, float], ...] = ()
    """``(token, bias)`` pairs added to those tokens' logits (OpenAI's, -100 to 100)."""
    min_new_tokens: int = 0
    """End-of-text cannot come before this many tokens."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "logit_bias", tuple((int(t), float(b)) for t, b in dict(self.logit_bias).items()))
        problems = [f"{name} must be {rule}, got {value!r}" for name, value, bad, rule in (
            ("max_new_tokens", self.max_new_tokens, self.max_new_tokens < 1, "at least 1"),
            ("temperature", self.temperature, self.temperature < 0, "0 or more"),
            ("top_k", self.top_k, self.top_k is not None and self.top_k < 1, "at least 1 (or None)"),
            ("top_p", self.top_p, self.top_p is not None and not 0 < self.top_p <= 1, "in (0, 1] (or None)"),
            ("presence_penalty", self.presence_penalty, not -2 <= self.presence_penalty <= 2, "in [-2, 2]"),
            ("frequency_penalty", self.frequency_penalty, not -2 <= self.frequency_penalty <= 2, "in [-2, 2]"),
            ("repetition_penalty", self.repetition_penalty, self.repetition_penalty <= 0, "above 0"),
            ("logit_bias", self.logit_bias, any(not -100 <= b <= 100 for _, b in self.logit_bias),
             "biases in [-100, 100]"),
            ("min_new_tokens", self.min_new_tokens, self.min_new_tokens < 0, "0 or more"))
            if bad]
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def reshapes_logits(self) -> bool:
        """Whether ``adjusted_logits`` changes anything."""
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0
                    or self.logit_bias or self.min_new_tokens)

    def to_dict(self) -> dict:
        """The settings as JSON keeps them (lists for the tuples)."""
        return {**asdict(self), "stop": list(self.stop), "logit_bias": [list(pair) for pair in self.logit_bias]}

    def with_(self, **changes) -> SamplingParams:
        """A copy with ``changes`` (checked again)."""
        return replace(self, **changes)

    def generator(self, device: torch.device | str, offset: int = 0) -> torch.Generator | None:
        """The random generator for sampling on ``device``: seeded with ``seed + offset`` when a
        seed is set (each record of a split its own, reproducible stream), fresh otherwise; None
        for greedy decoding."""
        if self.temperature <= 0:
            return None
        generator = torch.Generator(device=device)
        if self.seed is not None:
            generator.manual_seed(self.seed + offset)
        else:
            generator.seed()
        return generator


def adjusted_logits(logits: torch.Tensor, params: SamplingParams, prompt_ids: Sequence[int],
                    answer_ids: Sequence[int], eos_id: int = EOT_ID) -> torch.Tensor:
    """``logits [1, vocab]`` after ``params``' penalties, biases and minimum length, for the next
    token after ``prompt_ids`` and the answer so far ``answer_ids``."""
    logits = logits.float().clone()
    if params.presence_penalty or params.frequency_penalty:
        counts = torch.bincount(torch.as_tensor(list(answer_ids), dtype=torch.long, device=logits.device),
                                minlength=logits.shape[-1])[None, :logits.shape[-1]].float()
        logits -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0).float()
    if params.repetition_penalty != 1.0:
        seen = torch.as_tensor(sorted({*prompt_ids, *answer_ids}), dtype=torch.long, device=logits.device)
        picked = logits[0, seen]
        biggest = torch.finfo(logits.dtype).max  # a penalty near 0 divides into inf, never a logit
        logits[0, seen] = torch.where(picked > 0, picked / params.repetition_penalty,
                                      picked * params.repetition_penalty).clamp(-biggest, biggest)
    for token, bias in params.logit_bias:
        logits[0, token] += bias
    if len(answer_ids) < params.min_new_tokens:
        logits[0, eos_id] = float("-inf")
    return logits


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of ``logits [B, vocab]``: argmax at temperature 0, else sampled
    from the temperature-scaled distribution cut to the top-k tokens and the top-p mass."""
    if params.temperature < torch.finfo(torch.float32).tiny:  # 0, or too small to divide by in float32
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float()
    # the best at 0 before scaling: a temperature near 0 makes the rest -inf, never inf / inf
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / params.temperature
    top_k, top_p = params.top_k, params.top_p
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        sorted_probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the mass before it already reaches top_p; the top one always stays
        # (a top_p below float32's smallest number reads as 0 here).
        drop = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
        drop[:, 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.inference_mode()
def stream_tokens(model: GPTModel, idx: torch.Tensor, params: SamplingParams, eos_id: int | None = EOT_ID,
                  use_cache: bool = True, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Yield the next token ids ``[B, 1]`` one step at a time, until every row has produced
    ``eos_id`` or ``params.max_new_tokens`` (bounded by the context length) are out. The
    batch engine (``generation.engine``) is what the verbs decode with; this is its reference."""
    max_new_tokens = max(0, min(params.max_new_tokens, model.cfg.context_length - idx.shape[1]))
    if max_new_tokens == 0:
        return
    was_training = model.training
    model.eval()
    try:
        cache = model.new_cache(idx.shape[0], idx.shape[1] + max_new_tokens) if use_cache else None
        finished = torch.zeros(idx.shape[0], 1, dtype=torch.bool, device=idx.device)
        logits = model(idx, cache)[:, -1]
        for step in range(max_new_tokens):
            next_ids = sample_next(logits, params, generator)
            if eos_id is not None:
                next_ids = next_ids.masked_fill(finished, eos_id)
                finished |= next_ids == eos_id
            yield next_ids
            if (eos_id is not None and bool(finished.all())) or step == max_new_tokens - 1:
                return
            if use_cache:
                logits = model(next_ids, cache)[:, -1]
            else:
                idx = torch.cat([idx, next_ids], dim=1)
                logits = model(idx)[:, -1]
    finally:
        model.train(was_training)


def generate(model: GPTModel, idx: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, eos_id: int | None = EOT_ID,
             use_cache: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """The prompt ``idx [B, T]`` followed by up to ``max_new_tokens`` new tokens (the settings
    are ``SamplingParams``'; ``generator`` draws the samples).

    As in the reference, a single sequence stops before its ``<|endoftext|>`` (which is not
    appended); in a batch, rows that finished early are filled with ``eos_id``.
    """
    params = SamplingParams(max(1, max_new_tokens), temperature, top_k, top_p)
    new = list(stream_tokens(model, idx, params, eos_id, use_cache, generator)) if max_new_tokens > 0 else []
    if new and idx.shape[0] == 1 and eos_id is not None and int(new[-1]) == eos_id:
        new.pop()
    return torch.cat([idx, *new], dim=1)
