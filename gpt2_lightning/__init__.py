"""Instruction-fine-tune a hand-written GPT-2 with PyTorch Lightning and Hydra."""

from gpt2_lightning.model import GPTConfig, GPTModel, KVCache

__all__ = ["GPTConfig", "GPTModel", "KVCache"]
__version__ = "0.1.0"
