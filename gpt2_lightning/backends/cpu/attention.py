"""Attention on a CPU as two matmuls and a softmax, for sequences short enough that it beats SDPA.

SDPA's fused CPU kernel was 2-4x slower than this in bf16 for short sequences (forward +
backward, batch 8 x 12 heads, 57-128 tokens; 5-7x for a decoded token of a batch of 16), but
1.1x faster for the one token of a single sequence, and as fast beyond 256 x 256 scores, where
it also does not hold the ``[B, H, T, S]`` probabilities for the backward pass. In fp32 the
two were within 10% of each other at 91 tokens on one Intel Xeon, and SDPA ahead at 256. So up
to which length the matmuls run is measured per machine and dtype (``calibrate.attention_race``)
and is the plan's ``Workload.matmul_tokens``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def short_sequence_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                             is_causal: bool = False, dropout_p: float = 0.0, *, dtype: torch.dtype,
                             max_tokens: int) -> torch.Tensor:
    """The model's attention (``F.scaled_dot_product_attention``'s arguments and result), by
    ``matmul_attention`` where it measured faster: CPU tensors in ``dtype``, at most
    ``max_tokens`` x ``max_tokens`` scores per head, more than one query in the batch."""
    short = q.shape[-2] * k.shape[-2] <= max_tokens * max_tokens
    single_token = q.shape[0] * q.shape[-2] == 1
    if q.device.type == "cpu" and q.dtype == dtype and short and not single_token:
        return matmul_attention(q, k, v, mask, is_causal, dropout_p)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p)


def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                     is_causal: bool = False, dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + mask) v written out (the softmax accumulates in fp32). A causal
    mask is added in the scores' product (``baddbmm``, the scale too): no pass of its own over
    the scores, forward or backward (12-17% faster in bf16 at 91-256 tokens than masking after)."""
    batch, heads, queries, dim = q.shape
    keys = k.shape[-2]
    if is_causal:
        future = torch.full((queries, keys), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
        scores = torch.baddbmm(future, q.reshape(batch * heads, queries, dim),
                               k.reshape(batch * heads, keys, dim).transpose(1, 2), alpha=dim ** -0.5)
        scores = scores.view(batch, heads, queries, keys)
    else:
        scores = (q * dim ** -0.5) @ k.transpose(-2, -1)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0:
        probs = F.dropout(probs, dropout_p)
    return probs @ v
