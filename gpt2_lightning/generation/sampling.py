"""Autoregressive sampling from a ``GPTModel``: greedy, temperature, top-k, top-p, KV cache."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from gpt2_lightning.model.gpt import GPTModel
from gpt2_lightning.model.tokenizer import EOT_ID


def sampling_generator(model: GPTModel, temperature: float, seed: int | None) -> torch.Generator | None:
    """The random generator for sampling on ``model``'s device: seeded when ``seed`` is
    given (reproducible answers), fresh otherwise; None for greedy decoding."""
    if temperature <= 0:
        return None
    generator = torch.Generator(device=next(model.parameters()).device)
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    return generator


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of ``logits [B, vocab]``: argmax at temperature 0, else sampled
    from the temperature-scaled distribution cut to the top-k tokens and the top-p mass."""
    if temperature <= 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the mass before it already reaches top_p (the top one always stays).
        drop = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.inference_mode()
def stream_tokens(model: GPTModel, idx: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                  top_k: int | None = None, top_p: float | None = None, eos_id: int | None = EOT_ID,
                  use_cache: bool = True, generator: torch.Generator | None = None,
                  pad_lengths: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """Yield the next token ids ``[B, 1]`` one step at a time, until every row has produced
    ``eos_id`` or ``max_new_tokens`` (bounded by the context length) are out.

    ``pad_lengths [B]``: the rows of ``idx`` are left-padded by that many tokens (which are
    ignored); needs the cache.
    """
    if pad_lengths is not None and not use_cache:
        raise ValueError("left-padded batches need use_cache=True")
    context = model.cfg.context_length
    max_new_tokens = max(0, min(max_new_tokens, context - idx.shape[1]))
    if max_new_tokens == 0:
        return
    was_training = model.training
    model.eval()
    try:
        cache = model.new_cache(idx.shape[0], idx.shape[1] + max_new_tokens, pad_lengths) if use_cache else None
        finished = torch.zeros(idx.shape[0], 1, dtype=torch.bool, device=idx.device)
        logits = model(idx, cache)[:, -1]
        for step in range(max_new_tokens):
            next_ids = sample_next(logits, temperature, top_k, top_p, generator)
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
    """The prompt ``idx [B, T]`` followed by up to ``max_new_tokens`` new tokens.

    As in the reference, a single sequence stops before its ``<|endoftext|>`` (which is not
    appended); in a batch, rows that finished early are filled with ``eos_id``.
    """
    new = list(stream_tokens(model, idx, max_new_tokens, temperature, top_k, top_p, eos_id,
                             use_cache, generator))
    if new and idx.shape[0] == 1 and eos_id is not None and int(new[-1]) == eos_id:
        new.pop()
    return torch.cat([idx, *new], dim=1)


def generate_batch(model: GPTModel, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                   temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                   eos_id: int | None = EOT_ID, generator: torch.Generator | None = None) -> list[list[int]]:
    """New tokens for each of several prompts of any lengths, decoded together.

    The prompts are left-padded into one batch (the padding is masked out of attention
    and positions), so each answer is what ``generate`` would give for its prompt alone.
    The returned lists stop before ``eos_id``.
    """
    if not prompts:
        return []
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    pad = eos_id if eos_id is not None else 0
    idx = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=device)
    pad_lengths = torch.tensor([width - len(p) for p in prompts], device=device)
    steps = list(stream_tokens(model, idx, max_new_tokens, temperature, top_k, top_p, eos_id,
                               use_cache=True, generator=generator, pad_lengths=pad_lengths))
    if not steps:
        return [[] for _ in prompts]
    new = torch.cat(steps, dim=1).tolist()
    return [row[:row.index(eos_id)] if eos_id in row else row for row in new]
