"""Instruction-fine-tune a hand-written GPT-2 with PyTorch Lightning and Hydra.

The public API. Names are imported when first used, so that ``import gpt2_lightning`` (and
the commands that need no training) do not wait for Lightning.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "GPTConfig": "model.gpt",
    "GPTModel": "model.gpt",
    "KVCache": "model.gpt",
    "load_pretrained": "model.pretrained",
    "convert_hf_state_dict": "model.pretrained",
    "load_model": "export.load",
    "generate": "generation.sampling",
    "format_prompt": "data.prompts",
    "extract_response": "data.prompts",
    "load_records": "data.records",
    "split_records": "data.records",
    "InstructionDataset": "data.dataset",
    "InstructionCollator": "data.dataset",
    "InstructionDataModule": "data.datamodule",
    "InstructionTuner": "train.module",
    "masked_lm_loss": "train.loss",
    "PreferenceDataset": "data.preference",
    "PreferenceCollator": "data.preference",
    "PreferenceDataModule": "data.datamodule",
    "PreferenceTuner": "train.preference_tuner",
    "sequence_logprobs": "train.preference",
    "preference_loss": "train.preference",
    "download": "fetch",
    "ChatModel": "chat_model",
    "SamplingParams": "generation.sampling",
    "Run": "export.run",
    "ExecutionPlan": "backends.plan",
}
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'gpt2_lightning' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"gpt2_lightning.{_API[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
