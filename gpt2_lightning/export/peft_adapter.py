"""A LoRA run's adapters alone, in the PEFT format (``adapter_config.json`` +
``adapter_model.safetensors``) that ``peft`` loads onto the Hugging Face GPT-2 of the base."""

from __future__ import annotations

import os
import re
from pathlib import Path

import safetensors.torch

from gpt2_lightning.errors import ConfigError
from gpt2_lightning.export.run import Run
from gpt2_lightning.io import atomic_write, write_json
from gpt2_lightning.model.gpt import GPT2_ALIASES
from gpt2_lightning.model.lora import LORA_TARGETS, LoRAConfig
from gpt2_lightning.model.pretrained import HUB_REPOS
from gpt2_lightning.train.checkpoints import read_checkpoint

# Our LoRA targets -> the GPT2LMHeadModel modules they adapt (Conv1D layers: fan_in_fan_out).
HF_MODULES = {"qkv": "attn.c_attn", "out_proj": "attn.c_proj", "fc": "mlp.c_fc", "proj": "mlp.c_proj"}
_TARGET_OF_LAYER = {layer: target for target, layer in LORA_TARGETS.items()}
_ADAPTER_KEY = re.compile(r"^model\.blocks\.(\d+)\.(.+)\.lora_(a|b)$")


def lora_checkpoint(spec: str | os.PathLike) -> Path:
    """The checkpoint that holds a run's adapters: the run's best, else its last; or the .ckpt given."""
    path = Path(spec)
    if path.suffix == ".ckpt":
        return path
    found = Run(path).delivered_checkpoint
    if found is None:
        raise ConfigError(f"--adapter-only needs a LoRA run's checkpoint; {path} holds no checkpoints/*.ckpt")
    return found


def hf_base_name(weights: str) -> str:
    canonical = GPT2_ALIASES.get(weights.lower(), weights.lower())
    return f"openai-community/{HUB_REPOS[canonical]}" if canonical in HUB_REPOS else weights


def export_peft_adapter(spec: str | os.PathLike, folder: Path) -> None:
    path = lora_checkpoint(spec)
    checkpoint = read_checkpoint(path)
    hparams = checkpoint["hyper_parameters"]
    if not hparams.get("adapter"):
        raise ConfigError(f"{path} is a full fine-tune, not a LoRA run: export it without --adapter-only")
    adapter = LoRAConfig(**hparams["adapter"])
    tensors = {}
    for key, tensor in checkpoint["state_dict"].items():
        layer, module, kind = _ADAPTER_KEY.match(key).groups()
        hf_module = HF_MODULES[_TARGET_OF_LAYER[module]]
        tensors[f"base_model.model.transformer.h.{layer}.{hf_module}.lora_{kind.upper()}.weight"] = \
            tensor.float().contiguous()
    with atomic_write(folder / "adapter_model.safetensors", binary=True) as f:
        f.write(safetensors.torch.save(tensors, metadata={"format": "pt"}))
    write_json(folder / "adapter_config.json", {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": hf_base_name(hparams["base"]["weights"]),
        "r": adapter.r,
        "lora_alpha": adapter.alpha,
        "lora_dropout": adapter.dropout,
        "target_modules": [HF_MODULES[t] for t in adapter.targets],
        "fan_in_fan_out": True,
        "bias": "none",
        "inference_mode": True,
    })
