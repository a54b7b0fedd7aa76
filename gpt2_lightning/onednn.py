"""fp32 linear layers through oneDNN for generation on a CPU.

torch's fp32 ``F.linear`` on a CPU calls a BLAS that, on some CPUs, streams the weights of a
decoding step (1-16 rows of input) at a fraction of the memory bandwidth; oneDNN's inner
product over a weight copy in its own layout does not (AMD EPYC, 2 threads, all of
gpt2-small's linear layers: 28.7 -> 14.4 ms for one row, 61.9 -> 28.7 ms for 16). Whether
it pays on this machine is measured (``calibrate.onednn_faster``), not assumed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class OneDNNLinear(nn.Linear):
    """An ``nn.Linear`` holding the same parameters (its state dict is unchanged) plus a copy
    of its weight in oneDNN's layout, used while no gradient is taken and the parameters are
    the fp32 CPU tensors the copy was made from; otherwise it is a plain ``nn.Linear``."""

    def __init__(self, linear: nn.Linear):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias  # the same Parameters: ties stay tied
        self._packed = [t.detach().to_mkldnn() if t is not None else None for t in (self.weight, self.bias)]
        self._source = self._identity()

    def _identity(self) -> tuple:
        """What tells the parameters apart from those the copy was made of (inference tensors,
        which only inference mode may change, count no versions)."""
        return tuple((t.data_ptr(), None if t.is_inference() else t._version, t.dtype, t.device)
                     if t is not None else None for t in (self.weight, self.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.dtype != torch.float32 or self._identity() != self._source:
            return F.linear(x, self.weight, self.bias)
        out = torch._C._nn.mkldnn_linear(x.reshape(-1, x.shape[-1]).to_mkldnn(), *self._packed)
        return out.to_dense().view(*x.shape[:-1], self.out_features)


def use_onednn_linears(model: nn.Module) -> nn.Module:
    """Replace every plain fp32 CPU ``nn.Linear`` of ``model`` (in place) by a ``OneDNNLinear``."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is nn.Linear and child.weight.dtype == torch.float32 and child.weight.device.type == "cpu":
                setattr(module, name, OneDNNLinear(child))
    return model
