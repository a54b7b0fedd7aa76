"""A backend: where a device substitutes faster kernels for the reference math.

The model and the losses compute the reference math (SDPA, ``F.cross_entropy``) and take
hooks: the model an attention function and a GELU (``GPTModel.use_kernels``), the SFT loss a
``head_loss`` (``masked_lm_loss(..., head_loss=...)``), the sequence log-probabilities of
preference tuning a ``token_losses`` (``sequence_logprobs(..., token_losses=...)``). A backend decides, per device, the
plan's choices (``plan_training`` / ``plan_generation``), swaps the model's linear layers
where the plan says (``prepare``), and hands out the hooks' kernels (``kernels``). A new
device (MPS, XPU) is one new module beside ``cpu/`` and ``cuda.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from gpt2_lightning.backends.plan import PRECISION_DTYPES, Workload


@dataclass(frozen=True)
class Kernels:
    """The hooks' kernels: None keeps the reference."""

    attention: Callable | None = None
    """``(q, k, v, mask, is_causal, dropout_p) -> out``, as ``F.scaled_dot_product_attention``."""
    gelu: Callable | None = None
    """``x -> GELU(x)``, as GPT-2's tanh GELU (``model.gpt.gelu``)."""
    head_loss: Callable | None = None
    """``(head, hidden [N, C], targets [N], count) -> summed cross-entropy / count``."""
    token_losses: Callable | None = None
    """``(head, hidden [N, C], targets [N]) -> cross-entropy of each row [N]``."""


class Backend:
    """The reference: every device's own kernels through torch, fp32 unless told otherwise."""

    def plan_training(self, precision: str, width: int, measure: bool) -> tuple[str, Workload, dict[str, str]]:
        """The precision (``auto`` resolved), the training workload, and what was measured for it.
        ``measure=False``: decide without timing anything (the same answer in every process)."""
        precision = "32-true" if precision == "auto" else precision
        return precision, Workload(PRECISION_DTYPES[precision]), {}

    def plan_generation(self, dtype: str, width: int, measure: bool = True) -> tuple[Workload, dict[str, str]]:
        """The generation workload for ``dtype`` (``auto`` resolved) and what was measured for it."""
        return Workload("float32" if dtype == "auto" else dtype), {}

    def prepare(self, model: nn.Module, workload: Workload) -> None:
        """Swap ``model``'s layers (in place, same parameters) for the workload's kernels."""

    def kernels(self, workload: Workload) -> Kernels:
        return Kernels()
