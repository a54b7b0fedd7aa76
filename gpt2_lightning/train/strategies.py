"""Distributed strategies: FSDP sharded per transformer block, and which strategies shard the model."""

from __future__ import annotations

from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy, Strategy

from gpt2_lightning.model.gpt import TransformerBlock


def fsdp_strategy(activation_checkpointing: bool = False, **kwargs):
    """Lightning's FSDP, sharding per transformer block (for gpt2-large and gpt2-xl)."""
    blocks = {TransformerBlock}
    return FSDPStrategy(auto_wrap_policy=blocks,
                        activation_checkpointing_policy=blocks if activation_checkpointing else None,
                        **kwargs)


def shards_parameters(strategy: Strategy) -> bool:
    """Whether no process holds the whole model: its forward and its state dict are then
    collectives that every process must join."""
    return isinstance(strategy, (FSDPStrategy, ModelParallelStrategy, DeepSpeedStrategy))
