"""Preference tuning's math: the log-probability of each answer, and the DPO family of losses."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gpt2_lightning.model.gpt import GPTModel
from gpt2_lightning.train.loss import scored_hidden_states

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust", "simpo")
TokenLosses = Callable[[nn.Linear, torch.Tensor, torch.Tensor], torch.Tensor]


def token_losses_of_head(head: nn.Linear, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The cross-entropy of the LM head's logits per row: the reference a backend's ``token_losses`` equals."""
    return F.cross_entropy(head(hidden).float(), targets, reduction="none")


def answer_logprobs(model: GPTModel, input_ids: torch.Tensor, targets: torch.Tensor,
                    token_losses: TokenLosses | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``targets [B, T]``, the summed log-probability of its scored targets ``[B]``
    and how many there are ``[B]``; on the SFT loss's path (the head only where a target is scored)."""
    hidden, flat_targets, rows = scored_hidden_states(model, input_ids, targets)
    logprobs = -(token_losses or token_losses_of_head)(model.out_head, hidden, flat_targets)
    sums = torch.zeros(len(targets), dtype=logprobs.dtype, device=logprobs.device).index_add(0, rows, logprobs)
    counts = torch.zeros(len(targets), dtype=torch.long, device=rows.device).index_add(0, rows, torch.ones_like(rows))
    return sums, counts


def sequence_logprobs(model: GPTModel, input_ids: torch.Tensor, targets: torch.Tensor, average: bool = False,
                      token_losses: TokenLosses | None = None) -> torch.Tensor:
    """Per row, the sum of the log-probabilities of the scored targets (``-100`` elsewhere) ``[B]``,
    or with ``average`` their mean (a row with none scores 0)."""
    sums, counts = answer_logprobs(model, input_ids, targets, token_losses)
    return sums / counts.clamp(min=1) if average else sums


def preference_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                    reference_chosen: torch.Tensor | None = None, reference_rejected: torch.Tensor | None = None,
                    beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0, gamma: float = 0.5
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mean preference loss over the pairs, and each pair's chosen and rejected reward
    (``beta * (policy - reference)``; ``beta * policy`` for the reference-free ``simpo``).

    With ``h = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)``:

    - ``sigmoid`` (DPO): ``-(1 - e) log s(beta h) - e log s(-beta h)``, ``e`` the label smoothing;
    - ``robust`` (rDPO): ``(-(1 - e) log s(beta h) + e log s(-beta h)) / (1 - 2e)``;
    - ``hinge`` (SLiC): ``max(0, 1 - beta h)``;
    - ``ipo``: ``(h - 1 / (2 beta))^2``;
    - ``simpo``: ``-log s(beta (policy_chosen - policy_rejected) - gamma)``, no reference, meant
      for mean (length-normalised) log-probabilities.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown preference loss {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
    if loss_type == "simpo":
        margin = beta * (policy_chosen - policy_rejected) - gamma
        losses = -F.logsigmoid(margin)
        return losses.mean(), beta * policy_chosen.detach(), beta * policy_rejected.detach()
    if reference_chosen is None or reference_rejected is None:
        raise ValueError(f"the {loss_type} loss needs the reference's log-probabilities")
    h = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h) * (1 - label_smoothing) - F.logsigmoid(-beta * h) * label_smoothing
    elif loss_type == "robust":
        losses = (-F.logsigmoid(beta * h) * (1 - label_smoothing) + F.logsigmoid(-beta * h) * label_smoothing) \
            / (1 - 2 * label_smoothing)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        losses = (h - 1 / (2 * beta)) ** 2
    chosen_rewards = beta * (policy_chosen - reference_chosen).detach()
    rejected_rewards = beta * (policy_rejected - reference_rejected).detach()
    return losses.mean(), chosen_rewards, rejected_rewards
