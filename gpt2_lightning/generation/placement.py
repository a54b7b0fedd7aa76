"""A model ready to generate: on its plan's device, in its dtype, with its kernels."""

from __future__ import annotations

import copy
import logging

from torch import nn

from gpt2_lightning.backends import ExecutionPlan, generation_plan, prepare_for_generation
from gpt2_lightning.model.gpt import GPTModel

log = logging.getLogger(__name__)


def placed_for_generation(model: GPTModel, plan: ExecutionPlan | None = None, device: str = "auto",
                          dtype: str = "auto") -> GPTModel:
    """``model`` in eval mode as ``plan`` generates (without one: the plan made, and logged,
    for ``device`` and ``dtype``, see ``backends.generation_plan``)."""
    if plan is None:
        plan = generation_plan(device, dtype, model.cfg.emb_dim)
        log.info("execution plan: %s", plan.describe())
    return prepare_for_generation(model, plan)


def generation_copy(model: GPTModel, plan: ExecutionPlan) -> GPTModel:
    """A copy of ``model`` placed as ``plan`` generates, ``model`` left as it is (training goes on
    with it). Each weight is cast as it is copied: no copy in its own dtype is made first, and tied
    weights stay tied."""
    weights = {id(param): nn.Parameter(param.detach().to(plan.device, plan.generate.torch_dtype), requires_grad=False)
               for param in model.parameters()}
    return prepare_for_generation(copy.deepcopy(model, memo=weights), plan)
