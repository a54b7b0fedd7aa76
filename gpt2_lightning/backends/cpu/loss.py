"""The LM head and its cross-entropy on a CPU: the same values and gradients as
``F.cross_entropy(head(hidden).float(), targets, reduction="sum") / count``, faster.

- The cross-entropy runs in fp32 chunks of rows, its gradient computed in the forward pass:
  the whole batch's fp32 log-probabilities never exist, and ``loss.backward()`` itself is no
  pass over the logits (1.9x / 3.5x faster than ``F.cross_entropy`` over fp32 / bf16 logits).
- The head's weight gradient is computed ``WEIGHT_GRAD_BLOCK_ROWS`` vocabulary rows at a time
  (2.3x faster in bf16 than one product over GPT-2's 50257 rows), through oneDNN in fp32
  where the head is a ``OneDNNLinear``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from gpt2_lightning.backends.cpu.onednn import WEIGHT_GRAD_BLOCK_ROWS, OneDNNLinear, onednn_mm, weight_gradient

# Logit elements per chunk of rows: 2^18-2^20 measured fastest (AMD EPYC, 2048 x 50257 logits,
# forward + backward: 169-172 ms fp32 and 144-168 ms bf16 logits, against 176-282 / 216-372 ms
# for 2^22-2^26 and 328 / 503 ms for F.cross_entropy).
CHUNK_ELEMENTS = 1 << 20


def head_loss(head: nn.Linear, hidden: torch.Tensor, targets: torch.Tensor,
              count: torch.Tensor | int) -> torch.Tensor:
    """The summed cross-entropy of ``head(hidden)`` against ``targets``, divided by ``count``."""
    return cross_entropy(head_logits(head, hidden), targets, count)


def head_logits(head: nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    """``head(hidden)``, with the weight's gradient computed in blocks of vocabulary rows (also
    under autocast) where the head is a bias-free CPU layer with more rows than a block."""
    if (hidden.device.type != "cpu" or head.bias is not None or head.weight.shape[0] <= WEIGHT_GRAD_BLOCK_ROWS
            or torch.compiler.is_compiling()):
        return head(hidden)
    return _VocabBlockedHead.apply(hidden, head.weight, isinstance(head, OneDNNLinear))


class _VocabBlockedHead(torch.autograd.Function):
    """``hidden @ weight.T`` in the autocast dtype where autocast is on (as ``F.linear`` would
    run), through oneDNN where ``onednn`` and fp32."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, onednn: bool) -> torch.Tensor:
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else weight.dtype
        hidden_, weight_ = hidden.to(dtype), weight.to(dtype)
        ctx.save_for_backward(hidden_, weight_)
        ctx.mm = onednn_mm if onednn and dtype == torch.float32 else torch.mm
        ctx.dtypes = hidden.dtype, weight.dtype
        return ctx.mm(hidden_, weight_.t())

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        hidden, weight = ctx.saved_tensors
        grad = grad.to(weight.dtype)
        grad_hidden = ctx.mm(grad, weight).to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
        grad_weight = weight_gradient(grad, hidden, ctx.mm).to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
        return grad_hidden, grad_weight, None


def token_losses(head: nn.Linear, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The cross-entropy of ``head(hidden)`` against ``targets`` per row ``[N]``."""
    return cross_entropy(head_logits(head, hidden), targets, per_row=True)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, count: torch.Tensor | int | None = None,
                  chunk_rows: int | None = None, per_row: bool = False) -> torch.Tensor:
    """``F.cross_entropy(logits.float(), targets, reduction="sum") / count`` for CPU ``logits
    [N, V]``, ``chunk_rows`` rows at a time (default: ``CHUNK_ELEMENTS`` logits a chunk);
    with ``per_row``, each row's cross-entropy ``[N]`` (``reduction="none"``)."""
    count = None if per_row else len(targets) if count is None else count
    if chunk_rows is None:
        chunk_rows = max(1, CHUNK_ELEMENTS // logits.shape[-1])
    return _ChunkedCrossEntropy.apply(logits, targets, count, chunk_rows)


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, count: torch.Tensor | int | None,
                chunk_rows: int) -> torch.Tensor:
        """Summed cross-entropy / ``count``; with ``count=None``, each row's cross-entropy."""
        losses = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        grad = torch.empty_like(logits) if ctx.needs_input_grad[0] else None
        minus_one = torch.full((chunk_rows, 1), -1.0, device=logits.device)
        for start in range(0, logits.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            chunk = logits[rows].float()  # a copy, unless the logits are fp32 already
            target = targets[rows].unsqueeze(1)
            log_norm = torch.logsumexp(chunk, dim=1, keepdim=True)
            losses[rows] = (log_norm - chunk.gather(1, target)).squeeze(1)
            if grad is not None:  # d loss / d logits = (softmax - one_hot(target)) / count
                fp32 = grad.dtype == torch.float32  # then written in place, else through the copy
                probs = torch.sub(chunk, log_norm, out=grad[rows] if fp32 else chunk).exp_()
                probs.scatter_add_(1, target, minus_one[:len(target)])
                if count is not None:  # per row: each row's own gradient, undivided
                    probs.div_(count)
                if not fp32:
                    grad[rows] = probs
        ctx.save_for_backward(grad)
        ctx.per_row = count is None
        return losses if ctx.per_row else losses.sum() / count

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        if ctx.per_row:
            return grad * grad_output.unsqueeze(1).to(grad.dtype), None, None, None
        if grad_output.item() == 1.0:  # loss.backward() itself: no pass over the logits (no wait on a CPU)
            return grad, None, None, None
        return grad * grad_output, None, None, None
