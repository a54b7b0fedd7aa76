"""The LM head and its cross-entropy on a CPU: the same values and gradients as
``F.cross_entropy(head(hidden).float(), targets, reduction="sum") / count``, faster.

- The head's product runs ``HEAD_BLOCK_ROWS`` vocabulary rows at a time, forward and for the
  weight's gradient (faster than one product over GPT-2's 50257 rows: the measurements are
  beside the constant); in fp32 where the head is a ``OneDNNLinear``, its forward product through
  oneDNN and its gradients through the layer's ``gradients`` kernel.
- The cross-entropy runs in fp32 chunks of rows, its gradient computed in the forward pass and
  written over the logits, which nothing else reads: the whole batch's fp32 log-probabilities
  never exist, and ``loss.backward()`` itself is no pass over the logits (1.9x / 3.5x faster than
  ``F.cross_entropy`` over fp32 / bf16 logits; chunks of 5 to 320 rows of 50257 logits measured
  alike on Zen 3, 2^18-2^20 logits fastest on Zen 4).
- A token embedding tied to the head adds the rows the batch looked up into the head's
  gradient, in place (``embedding_rows_into_head_gradient``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from gpt2_lightning.backends.cpu.onednn import GRADIENT_MM, HEAD_BLOCK_ROWS, OneDNNLinear, onednn_mm, weight_gradient

# Logit elements per chunk of rows: 2^18-2^20 measured fastest (AMD EPYC, 2048 x 50257 logits,
# forward + backward: 169-172 ms fp32 and 144-168 ms bf16 logits, against 176-282 / 216-372 ms
# for 2^22-2^26 and 328 / 503 ms for F.cross_entropy); on a Zen 5, 2^18-2^22 alike and 2^24
# slower (the head's loss with its product and gradients, 450 and 2048 rows, fp32 and bf16).
CHUNK_ELEMENTS = 1 << 20


def head_loss(head: nn.Linear, hidden: torch.Tensor, targets: torch.Tensor,
              count: torch.Tensor | int) -> torch.Tensor:
    """The summed cross-entropy of ``head(hidden)`` against ``targets``, divided by ``count``."""
    return _head_cross_entropy(head, hidden, targets, count)


def token_losses(head: nn.Linear, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The cross-entropy of ``head(hidden)`` against ``targets`` per row ``[N]``."""
    return _head_cross_entropy(head, hidden, targets, None)


def _head_cross_entropy(head: nn.Linear, hidden: torch.Tensor, targets: torch.Tensor,
                        count: torch.Tensor | int | None) -> torch.Tensor:
    """``count=None``: per row. The head in vocabulary blocks where it is a bias-free CPU layer
    with more rows than a block."""
    if (hidden.device.type == "cpu" and head.bias is None and head.weight.shape[0] > HEAD_BLOCK_ROWS
            and not torch.compiler.is_compiling()):
        gradients = head.gradients if isinstance(head, OneDNNLinear) else None
        head_rows = getattr(head, "head_rows", None)
        slot = head_rows.claim() if head_rows is not None and torch.is_grad_enabled() else None
        return _HeadCrossEntropy.apply(hidden, head.weight, targets, count, gradients, slot)
    return cross_entropy(head(hidden), targets, count, per_row=count is None)


class _HeadCrossEntropy(torch.autograd.Function):
    """``cross_entropy(hidden @ weight.T, targets, count)``, the product in the autocast dtype
    where autocast is on (as ``F.linear`` would run it); in fp32 with ``gradients`` (the
    ``GRADIENT_MM`` name of a ``OneDNNLinear`` head), the forward product through oneDNN and the
    gradients through that kernel. ``count=None``: each row's cross-entropy. ``slot``: a tied
    lookup's, where the weight's gradient is left for it."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                count: torch.Tensor | int | None, gradients: str | None, slot: list | None) -> torch.Tensor:
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else weight.dtype
        hidden_, weight_ = hidden.to(dtype), weight.to(dtype)
        onednn = gradients is not None and dtype == torch.float32
        forward_mm = onednn_mm if onednn else torch.mm
        logits = hidden_.new_empty(len(hidden_), len(weight_))
        for start in range(0, len(weight_), HEAD_BLOCK_ROWS):
            block = slice(start, start + HEAD_BLOCK_ROWS)
            logits[:, block] = forward_mm(hidden_, weight_[block].t())  # a contiguous product, then copied
        needs_grad = any(ctx.needs_input_grad[:2])
        losses = _chunked_cross_entropy(logits, targets, count, _chunk_rows(logits),
                                        grad=logits if needs_grad else None)
        ctx.save_for_backward(hidden_, weight_, logits if needs_grad else None)
        ctx.mm = GRADIENT_MM[gradients] if onednn else torch.mm
        ctx.count, ctx.dtypes, ctx.slot = count, (hidden.dtype, weight.dtype), slot
        return losses

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        hidden, weight, grad = ctx.saved_tensors
        grad = _scaled(grad, grad_output, per_row=ctx.count is None)
        grad_hidden = ctx.mm(grad, weight).to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
        grad_weight = weight_gradient(grad, hidden, ctx.mm, ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
        leave_head_gradient(ctx.slot, grad_weight)
        return grad_hidden, grad_weight, None, None, None, None


def embedding_rows_into_head_gradient(model: nn.Module) -> None:
    """Where ``model``'s token embedding (``tok_emb``) is tied to its LM head (``out_head``), add
    the rows the batch looked up into the head's weight gradient, in place, before autograd
    accumulates it: no zeroed gradient as large as the vocabulary's (154 MB in gpt2-small), and no
    copy of the head's (autograd sums a dense and a sparse gradient out of place). The weight's
    gradient stays dense; an untied embedding keeps its own dense gradient."""
    embedding, head = getattr(model, "tok_emb", None), getattr(model, "out_head", None)
    if (type(embedding) is nn.Embedding and getattr(head, "weight", None) is embedding.weight
            and embedding.padding_idx is None and embedding.max_norm is None and not embedding.scale_grad_by_freq):
        embedding.__class__ = _TiedEmbedding  # in place, as torch.nn.utils.parametrize does
        embedding.head_rows = head.head_rows = _HeadRows()


class _HeadRows:
    """What a tied embedding and its head share: the slot of the embedding's latest lookup, where
    the head's backward leaves its weight gradient for the lookup's backward to add rows into."""

    def __init__(self):
        self.slot: list[tuple[int, torch.Tensor]] | None = None

    def claim(self) -> list[tuple[int, torch.Tensor]] | None:
        """The latest lookup's slot, for one head product (None: none, or already claimed)."""
        slot, self.slot = self.slot, None
        return slot


def leave_head_gradient(slot: list[tuple[int, torch.Tensor]] | None, grad_weight: torch.Tensor | None) -> None:
    """Leave the head's weight gradient in its tied lookup's ``slot`` (if any), tagged with this
    backward pass: only a lookup's backward in the same pass may add rows into it, while autograd
    still holds it unaccumulated."""
    if slot is not None and grad_weight is not None:
        slot.append((torch._C._current_graph_task_id(), grad_weight))


class _TiedEmbedding(nn.Embedding):
    """An ``nn.Embedding`` tied to the LM head, whose lookup's gradient goes into the head's
    weight gradient (``embedding_rows_into_head_gradient``)."""

    head_rows: _HeadRows

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and self.weight.requires_grad) or torch.compiler.is_compiling():
            return super().forward(idx)
        self.head_rows.slot = slot = []
        return _TiedLookup.apply(idx, self.weight, slot)


class _TiedLookup(torch.autograd.Function):
    """``F.embedding(idx, weight)``; its weight's gradient, the looked-up rows, is added into a
    head gradient left in ``slot`` in the same backward pass, else returned sparse."""

    @staticmethod
    def forward(ctx, idx: torch.Tensor, weight: torch.Tensor, slot: list) -> torch.Tensor:
        ctx.save_for_backward(idx)
        ctx.slot, ctx.num_weights = slot, len(weight)
        return F.embedding(idx, weight)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (idx,) = ctx.saved_tensors
        task = torch._C._current_graph_task_id()
        head_grad = next((g for t, g in ctx.slot if t == task), None)
        ctx.slot.clear()
        if head_grad is not None:
            head_grad.index_add_(0, idx.reshape(-1), grad.reshape(-1, grad.shape[-1]).to(head_grad.dtype))
            return None, None, None
        # What F.embedding(..., sparse=True) returns: the rows it looked up.
        return None, torch.ops.aten.embedding_backward(grad, idx, ctx.num_weights, -1, False, True), None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, count: torch.Tensor | int | None = None,
                  chunk_rows: int | None = None, per_row: bool = False) -> torch.Tensor:
    """``F.cross_entropy(logits.float(), targets, reduction="sum") / count`` for CPU ``logits
    [N, V]``, ``chunk_rows`` rows at a time (default: ``CHUNK_ELEMENTS`` logits a chunk);
    with ``per_row``, each row's cross-entropy ``[N]`` (``reduction="none"``)."""
    count = None if per_row else len(targets) if count is None else count
    if chunk_rows is None:
        chunk_rows = _chunk_rows(logits)
    return _ChunkedCrossEntropy.apply(logits, targets, count, chunk_rows)


def _chunk_rows(logits: torch.Tensor) -> int:
    return max(1, CHUNK_ELEMENTS // logits.shape[-1])


def _chunked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, count: torch.Tensor | int | None,
                           chunk_rows: int, grad: torch.Tensor | None) -> torch.Tensor:
    """Summed cross-entropy / ``count`` (``count=None``: each row's) of ``logits``, ``chunk_rows``
    rows at a time; d loss / d logits into ``grad`` (where given: a buffer of the logits' shape
    and dtype, or the logits themselves)."""
    losses = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
    # -1 / count at each target (per row: -1, each row's own gradient undivided)
    at_target = torch.full((chunk_rows, 1), -1.0, device=logits.device)
    if count is not None:
        at_target = at_target / count
    for start in range(0, logits.shape[0], chunk_rows):
        rows = slice(start, start + chunk_rows)
        chunk = logits[rows].float()  # a copy, unless the logits are fp32 already
        target = targets[rows].unsqueeze(1)
        picked = chunk.gather(1, target)
        if grad is None:
            losses[rows] = (torch.logsumexp(chunk, dim=1, keepdim=True) - picked).squeeze(1)
            continue
        # One exponential pass serves the loss and its gradient, (softmax - one_hot(target)) / count:
        # logsumexp and then exp(chunk - log_norm) took two (32 against 21 ms for 451 x 50257 bf16 logits).
        fp32 = grad.dtype == torch.float32  # then written in place, else through the copy
        largest = chunk.amax(dim=1, keepdim=True)
        shifted = torch.sub(chunk, largest, out=grad[rows] if fp32 else chunk).exp_()
        norm = shifted.sum(dim=1, keepdim=True)
        losses[rows] = (norm.log() + largest - picked).squeeze(1)
        if count is not None:
            norm = norm * count
        probs = shifted.div_(norm).scatter_add_(1, target, at_target[:len(target)])
        if not fp32:
            grad[rows] = probs
    return losses if count is None else losses.sum() / count


def _scaled(grad: torch.Tensor, grad_output: torch.Tensor, per_row: bool) -> torch.Tensor:
    """d loss / d logits times the gradient flowing into the loss (``per_row``: one per row)."""
    if per_row:
        return grad * grad_output.unsqueeze(1).to(grad.dtype)
    if grad_output.item() == 1.0:  # loss.backward() itself: no pass over the logits (no wait on a CPU)
        return grad
    return grad * grad_output


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, count: torch.Tensor | int | None,
                chunk_rows: int) -> torch.Tensor:
        """Summed cross-entropy / ``count``; with ``count=None``, each row's cross-entropy."""
        grad = torch.empty_like(logits) if ctx.needs_input_grad[0] else None
        ctx.save_for_backward(grad)
        ctx.per_row = count is None
        return _chunked_cross_entropy(logits, targets, count, chunk_rows, grad)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return _scaled(grad, grad_output, ctx.per_row), None, None, None
