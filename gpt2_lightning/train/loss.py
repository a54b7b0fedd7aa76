"""The training loss: next-token cross-entropy over the scored targets only."""

from __future__ import annotations

import torch

from gpt2_lightning.data.dataset import IGNORE_INDEX
from gpt2_lightning.model.gpt import GPTModel

# Logit elements per chunk of rows: ~3 MB of fp32 on CPU (stays in cache), 256 MB elsewhere.
CHUNK_ELEMENTS = {"cpu": 1 << 20}
DEFAULT_CHUNK_ELEMENTS = 1 << 26


def masked_lm_loss(model: GPTModel, input_ids: torch.Tensor, targets: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over the targets that are not ``IGNORE_INDEX``, and their count.

    Equal to ``cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100)``, but
    the LM head (a third of GPT-2 small's FLOPs at these lengths) only runs where a
    target is scored (padding, and the prompt under ``mask_prompt``, are skipped), and the
    transformer only up to each row's last scored target: batches of mixed lengths cost
    what their real tokens cost, padding nothing but in attention.
    """
    scored = targets != IGNORE_INDEX
    positions = torch.arange(targets.shape[1], device=targets.device)
    last_scored = torch.where(scored, positions, -1).amax(dim=1, keepdim=True)
    keep = positions <= last_scored  # later positions feed no scored one (causal attention)
    hidden = model.hidden_states(input_ids, keep=keep)
    count = scored.sum()
    return cross_entropy(model.out_head(hidden[scored[keep]]), targets[scored], count.clamp(min=1)), count


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, count: torch.Tensor | int | None = None,
                  chunk_rows: int | None = None) -> torch.Tensor:
    """``F.cross_entropy(logits.float(), targets, reduction="sum") / count`` for ``logits [N, V]``.

    Computed in fp32 ``chunk_rows`` rows at a time, and the gradient with it: the whole
    batch's fp32 logits and log-probabilities never exist, and the backward pass is one
    multiply. On CPU this is 1.8x faster than the plain fp32 cross-entropy over bf16 logits
    (456 x 50257: 85 vs 155 ms forward + backward).
    """
    if chunk_rows is None:
        chunk_rows = max(1, CHUNK_ELEMENTS.get(logits.device.type, DEFAULT_CHUNK_ELEMENTS) // logits.shape[-1])
    count = len(targets) if count is None else count
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
            chunk = logits[rows].to(torch.float32, copy=True)
            target = targets[rows].unsqueeze(1)
            log_norm = torch.logsumexp(chunk, dim=1, keepdim=True)
            total += (log_norm - chunk.gather(1, target)).sum()
            if grad is not None:  # d loss / d logits = (softmax - one_hot(target)) / count
                probs = chunk.sub_(log_norm).exp_()
                probs.scatter_add_(1, target, minus_one[:len(target)])
                grad[rows] = probs.div_(count)
        ctx.save_for_backward(grad)
        return total / count

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_output, None, None, None
