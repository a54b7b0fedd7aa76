"""Distributed strategies that need the model's structure to be configured."""

from __future__ import annotations

from lightning.pytorch.strategies import FSDPStrategy

from gpt2_lightning.model.gpt import TransformerBlock


def fsdp_strategy(activation_checkpointing: bool = False, **kwargs):
    """Lightning's FSDP, sharding per transformer block (for gpt2-large and gpt2-xl)."""
    blocks = {TransformerBlock}
    return FSDPStrategy(auto_wrap_policy=blocks,
                        activation_checkpointing_policy=blocks if activation_checkpointing else None,
                        **kwargs)
