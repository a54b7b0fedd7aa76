"""LoRA: low-rank adapters on the model's linear layers (Hu et al., 2021).

A ``LoRALinear`` is the frozen ``nn.Linear`` it replaces (same parameter names, the same
tensors) plus ``lora_a [r, in]`` and ``lora_b [out, r]``: ``y = x W^T + b + (x A^T B^T) alpha / r``.
``B`` starts at zero, so an adapted model starts exactly where its base is. Merging folds
``B A alpha / r`` into ``W`` and gives back plain ``nn.Linear`` layers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gpt2_lightning.errors import ConfigError
from gpt2_lightning.model.gpt import GPTModel

# Target name -> the linear layer of each block it adapts.
LORA_TARGETS = {"qkv": "att.qkv", "out_proj": "att.out_proj", "fc": "ff.fc", "proj": "ff.proj"}


@dataclass(frozen=True)
class LoRAConfig:
    r: int = 8
    """Rank of the update."""
    alpha: float = 16.0
    """The update is scaled by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapters' input (training only)."""
    targets: tuple[str, ...] = field(default=tuple(LORA_TARGETS))
    """Which linear layers of every block get an adapter."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ConfigError(f"adapter.r must be a positive integer, got {self.r!r}")
        if not self.alpha > 0:
            raise ConfigError(f"adapter.alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"adapter.dropout must be in [0, 1), got {self.dropout!r}")
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        if unknown or not self.targets:
            raise ConfigError(f"adapter.targets {list(self.targets)}: choose among {', '.join(LORA_TARGETS)}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def to_dict(self) -> dict:
        return {**asdict(self), "targets": list(self.targets)}


class LoRALinear(nn.Linear):
    """A frozen linear layer with a trainable low-rank update."""

    def __init__(self, base: nn.Linear, config: LoRAConfig):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.scaling = config.scaling
        kwargs = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_a = nn.Parameter(torch.empty(config.r, self.in_features, **kwargs))
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, config.r, **kwargs))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear and PEFT initialise A
        self.lora_dropout = nn.Dropout(config.dropout)
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return F.linear(x, self.weight, self.bias)
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_a.to(x.dtype)), self.lora_b.to(x.dtype))
        return F.linear(x, self.weight, self.bias) + update * self.scaling

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing the same function. It takes this layer's weight with
        the update added in place, so merging needs no second copy of the model."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        with torch.no_grad():
            self.weight.add_(((self.lora_b.float() @ self.lora_a.float()) * self.scaling).to(self.weight.dtype))
        linear.weight, linear.bias = self.weight, self.bias
        return linear


def adapted_layers(model: GPTModel, targets: Sequence[str]) -> list[tuple[nn.Module, str]]:
    """``(parent module, attribute)`` of every linear layer the targets name."""
    layers = []
    for block in model.blocks:
        for target in targets:
            *path, attribute = LORA_TARGETS[target].split(".")
            parent = block
            for part in path:
                parent = getattr(parent, part)
            layers.append((parent, attribute))
    return layers


def add_lora(model: GPTModel, config: LoRAConfig) -> GPTModel:
    """Freeze ``model`` and give the targeted layers adapters, in place; return it."""
    model.requires_grad_(False)
    for parent, attribute in adapted_layers(model, config.targets):
        setattr(parent, attribute, LoRALinear(getattr(parent, attribute), config))
    return model


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` computing as its base inside the block: every adapter switched off."""
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    for layer in layers:
        layer.enabled = False
    try:
        yield model
    finally:
        for layer in layers:
            layer.enabled = True


def merge_lora(model: GPTModel) -> GPTModel:
    """Fold every adapter into its layer, in place; return the model, trainable as a whole."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, LoRALinear):
                setattr(module, name, child.merged())
    return model.requires_grad_(True)


def is_adapter_key(name: str) -> bool:
    return name.endswith((".lora_a", ".lora_b"))


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters alone (the keys end with ``lora_a`` / ``lora_b``)."""
    return {name: tensor for name, tensor in model.state_dict().items() if is_adapter_key(name)}
