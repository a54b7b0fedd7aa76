"""The training loss: next-token cross-entropy over the scored targets only."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from gpt2_lightning.data.dataset import IGNORE_INDEX
from gpt2_lightning.model.gpt import GPTModel, KeptPositions
from gpt2_lightning.onednn import WEIGHT_GRAD_BLOCK_ROWS, OneDNNLinear, onednn_mm, weight_gradient

# Logit elements per chunk of rows on CPU: 2^18-2^20 measured fastest (AMD EPYC, 2048 x 50257
# logits, forward + backward: 169-172 ms fp32 and 144-168 ms bf16 logits, against 176-282 /
# 216-372 ms for 2^22-2^26 and 328 / 503 ms for F.cross_entropy).
CPU_CHUNK_ELEMENTS = 1 << 20


def masked_lm_loss(model: GPTModel, input_ids: torch.Tensor, targets: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over the targets that are not ``IGNORE_INDEX``, and their count.

    Equal to ``cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100)``, but
    the LM head (a third of GPT-2 small's FLOPs at these lengths) only runs where a
    target is scored (padding, and the prompt under ``mask_prompt``, are skipped), and the
    transformer only up to each row's last scored target: batches of mixed lengths cost
    what their real tokens cost, padding nothing but in attention. A full batch, every
    position scored, takes the plain path; so does ``torch.compile``, which then traces one
    graph with no shape that depends on the data.
    """
    if torch.compiler.is_compiling():
        count = (targets != IGNORE_INDEX).sum()
        logits = model(input_ids).flatten(0, 1).float()
        loss = F.cross_entropy(logits, targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
        return loss / count.clamp(min=1), count
    batch, seq = targets.shape
    scored = (targets != IGNORE_INDEX).flatten()
    positions = torch.arange(seq, device=targets.device)
    last_scored = torch.where(scored.view(batch, seq), positions, -1).amax(dim=1, keepdim=True)
    kept = (positions <= last_scored).flatten().nonzero().squeeze(1)  # later positions feed no scored one
    targets = targets.flatten()
    if len(kept) == batch * seq:
        hidden = model.hidden_states(input_ids).flatten(0, 1)
    else:
        hidden = model.hidden_states(input_ids, kept=KeptPositions(kept, batch, seq))
        scored, targets = scored[kept], targets[kept]
    rows = scored.nonzero().squeeze(1)
    if len(rows) < len(scored):
        hidden, targets = hidden[rows], targets[rows]
    count = scored.sum()
    return cross_entropy(head_logits(model.out_head, hidden), targets, count.clamp(min=1)), count


def head_logits(head: nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    """``head(hidden)``; on a CPU with the weight's gradient computed in blocks of vocabulary rows
    (``onednn.weight_gradient``), also under autocast, where the head is not a ``OneDNNLinear``."""
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


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, count: torch.Tensor | int | None = None,
                  chunk_rows: int | None = None) -> torch.Tensor:
    """``F.cross_entropy(logits.float(), targets, reduction="sum") / count`` for ``logits [N, V]``.

    On CPU computed in fp32 ``chunk_rows`` rows at a time, and the gradient with it: the
    whole batch's fp32 log-probabilities never exist, and the backward pass of ``loss.backward()``
    is nothing (1.9x / 3.5x faster than ``F.cross_entropy`` over fp32 / bf16 logits). On GPUs
    the fused ``F.cross_entropy`` is faster (H200, 2048 x 50257: 1.0-1.4 ms against 2.4 ms for
    the chunked form in chunks of 2^26 elements, more for smaller chunks).
    """
    count = len(targets) if count is None else count
    if logits.device.type != "cpu":
        return F.cross_entropy(logits.float(), targets, reduction="sum") / count
    if chunk_rows is None:
        chunk_rows = max(1, CPU_CHUNK_ELEMENTS // logits.shape[-1])
    return _ChunkedCrossEntropy.apply(logits, targets, count, chunk_rows)


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, count: torch.Tensor | int,
                chunk_rows: int) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        grad = torch.empty_like(logits) if ctx.needs_input_grad[0] else None
        minus_one = torch.full((chunk_rows, 1), -1.0, device=logits.device)
        for start in range(0, logits.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            chunk = logits[rows].float()  # a copy, unless the logits are fp32 already
            target = targets[rows].unsqueeze(1)
            log_norm = torch.logsumexp(chunk, dim=1, keepdim=True)
            total += (log_norm - chunk.gather(1, target)).sum()
            if grad is not None:  # d loss / d logits = (softmax - one_hot(target)) / count
                fp32 = grad.dtype == torch.float32  # then written in place, else through the copy
                probs = torch.sub(chunk, log_norm, out=grad[rows] if fp32 else chunk).exp_()
                probs.scatter_add_(1, target, minus_one[:len(target)]).div_(count)
                if not fp32:
                    grad[rows] = probs
        ctx.save_for_backward(grad)
        return total / count

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        if grad_output.item() == 1.0:  # loss.backward() itself: no pass over the logits (CPU only, no wait)
            return grad, None, None, None
        return grad * grad_output, None, None, None
