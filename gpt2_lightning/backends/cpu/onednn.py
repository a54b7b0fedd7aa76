"""fp32 linear layers through oneDNN on a CPU, for training and generation.

torch's fp32 ``F.linear`` on a CPU calls MKL, which on AMD CPUs runs code for narrower
vectors than the CPU has. On one AMD EPYC (2 threads) it reached 140-215 GFLOP/s on
gpt2-small's linear layers where oneDNN's inner product over the same fp32 tensors reached
300-480, with the same fp32 arithmetic, and it streamed a decoding step's weights at a third
of the speed. Where MKL runs at full width the two are alike, so whether oneDNN pays is
measured on the machine (``calibrate.onednn_race``), not assumed.

The product is ``torch.ops.mkldnn._linear_pointwise``, a private op of torch's oneDNN
integration (what ``torch.compile`` emits for CPU linears): ``onednn_available`` says whether
this torch has it, and where it does not the plan keeps torch's ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

# Output rows per block of a weight gradient (and of the LM head's product, ``loss``): one
# product over the 50257 rows of GPT-2's LM head ran 2.3x slower in bf16 and 1.5x slower in fp32
# through oneDNN than blocks of 2048-16384 rows, which measured alike (AMD EPYC Zen 4, 447 input
# rows of gpt2-small); its forward product 1.4x slower than blocks of 2048-4096 (Zen 3, fp32,
# 2048 rows: 90 against 117-131 GFLOP/s). On a Zen 5, blocks of 2048-16384 rows measured alike
# again (the head's product, cross-entropy and gradients, 450 and 2048 rows, fp32 and bf16: within
# its run-to-run noise of 10-15%) and one product over all rows 1.2-1.4x slower at 450 rows. An
# optimum this flat on every machine measured is a constant, not a race the calibration pays for.
HEAD_BLOCK_ROWS = 4096


def onednn_available() -> bool:
    """Whether this torch has oneDNN and its inner-product op (checked by a test on every upgrade)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _inner_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` by oneDNN; any strides, no copy of ``weight``."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def onednn_mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``torch.mm(a, b, out=out)`` by oneDNN."""
    product = _inner_product(a, b.t())
    return product if out is None else out.copy_(product)


def weight_gradient(grad: torch.Tensor, x: torch.Tensor, mm=torch.mm, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``(grad.T @ x).to(dtype)`` (``[out, in]`` for ``grad [N, out]``, ``x [N, in]``) by ``mm``,
    ``HEAD_BLOCK_ROWS`` output rows at a time; in another ``dtype`` than ``grad``'s each block is
    cast as it is written, so that no whole gradient in ``grad``'s dtype is made and thrown away."""
    result = grad.new_empty(grad.shape[1], x.shape[1], dtype=dtype)
    for start in range(0, len(result), HEAD_BLOCK_ROWS):
        rows = slice(start, start + HEAD_BLOCK_ROWS)
        if result.dtype == grad.dtype:
            mm(grad[:, rows].t(), x, out=result[rows])
        else:
            result[rows] = mm(grad[:, rows].t(), x)
    return result


# The kernel of a layer's gradient products (``gradients`` of ``OneDNNLinear``): on one Zen 3
# (2 threads, 450 rows of gpt2-small) oneDNN ran the forward products that widen (768 to 2304,
# 3072, 4096 outputs) at 118-137 GFLOP/s against MKL's 90-101, but both gradients at 63-101
# against MKL's 100-131; on Zen 4 oneDNN was the faster of the two in every product.
GRADIENT_MM = {"onednn": onednn_mm, "torch": torch.mm}
# The fp32 linear kernels through oneDNN (``Workload.linears``) -> the kernel of their gradients.
LINEAR_GRADIENTS = {"onednn": "onednn", "onednn-forward": "torch"}


class _OneDNNLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gradients: str) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.mm = GRADIENT_MM[gradients]
        return _inner_product(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        rows = grad.reshape(-1, grad.shape[-1])
        grad_x = ctx.mm(rows, weight).view(*grad.shape[:-1], -1) if ctx.needs_input_grad[0] else None
        grad_weight = (weight_gradient(rows, x.reshape(-1, x.shape[-1]), ctx.mm)
                       if ctx.needs_input_grad[1] else None)
        grad_bias = rows.sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  gradients: str = "onednn") -> torch.Tensor:
    """``F.linear`` through oneDNN where it applies (fp32 CPU tensors, outside autocast and
    ``torch.compile``), its gradients through ``gradients`` (a ``GRADIENT_MM`` name);
    ``F.linear`` elsewhere."""
    if (x.dtype == weight.dtype == torch.float32 and x.device.type == weight.device.type == "cpu"
            and x.numel() and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()):
        return _OneDNNLinearFunction.apply(x, weight, bias, gradients)
    return F.linear(x, weight, bias)


class OneDNNLinear(nn.Linear):
    """An ``nn.Linear`` holding the same parameters (its state dict is unchanged, ties stay
    tied) whose fp32 CPU product goes through oneDNN, and its gradients through ``gradients``
    (``onednn``, or ``torch``: ``torch.mm``)."""

    def __init__(self, linear: nn.Linear, gradients: str = "onednn"):
        nn.Module.__init__(self)
        if gradients not in GRADIENT_MM:
            raise ValueError(f"gradients must be one of {sorted(GRADIENT_MM)}, got {gradients!r}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.gradients = gradients

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return onednn_linear(x, self.weight, self.bias, self.gradients)


def use_onednn_linears(model: nn.Module, gradients: str = "onednn") -> nn.Module:
    """Replace every plain ``nn.Linear`` of ``model`` (in place) by a ``OneDNNLinear`` whose
    gradients go through ``gradients``."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is nn.Linear:
                setattr(module, name, OneDNNLinear(child, gradients))
    return model
