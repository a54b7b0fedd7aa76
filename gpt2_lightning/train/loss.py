"""The training loss: next-token cross-entropy over the scored targets only."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gpt2_lightning.data.dataset import IGNORE_INDEX
from gpt2_lightning.model.gpt import GPTModel, KeptPositions

HeadLoss = Callable[[nn.Linear, torch.Tensor, torch.Tensor, "torch.Tensor | int"], torch.Tensor]


def cross_entropy_of_head(head: nn.Linear, hidden: torch.Tensor, targets: torch.Tensor,
                          count: torch.Tensor | int) -> torch.Tensor:
    """The summed cross-entropy of the LM head's logits for ``hidden [N, C]`` against
    ``targets [N]``, divided by ``count``: the reference a backend's ``head_loss`` equals."""
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum") / count


def masked_lm_loss(model: GPTModel, input_ids: torch.Tensor, targets: torch.Tensor,
                   head_loss: HeadLoss | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over the targets that are not ``IGNORE_INDEX``, and their count.

    Equal to ``cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100)``, but
    the LM head (a third of GPT-2 small's FLOPs at these lengths) only runs where a
    target is scored (padding, and the prompt under ``mask_prompt``, are skipped), and the
    transformer only up to each row's last scored target: batches of mixed lengths cost
    what their real tokens cost, padding nothing but in attention. A full batch, every
    position scored, takes the plain path; so does ``torch.compile``, which then traces one
    graph with no shape that depends on the data. ``head_loss`` (default
    ``cross_entropy_of_head``) is the hook where a backend computes the head and its
    cross-entropy faster (``gpt2_lightning.backends``).
    """
    if torch.compiler.is_compiling():
        count = (targets != IGNORE_INDEX).sum()
        logits = model(input_ids).flatten(0, 1).float()
        loss = F.cross_entropy(logits, targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
        return loss / count.clamp(min=1), count
    hidden, targets, _ = scored_hidden_states(model, input_ids, targets)
    count = torch.tensor(len(targets), device=targets.device)
    return (head_loss or cross_entropy_of_head)(model.out_head, hidden, targets, count.clamp(min=1)), count


def scored_hidden_states(model: GPTModel, input_ids: torch.Tensor, targets: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The final hidden states ``[N, C]`` at the ``N`` scored positions of ``targets [B, T]``
    (those not ``IGNORE_INDEX``), their targets ``[N]`` and the row of each ``[N]``. The
    transformer runs only up to each row's last scored target; a full batch, every position
    scored, takes the plain path."""
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
    return hidden, targets, kept[rows] // seq
