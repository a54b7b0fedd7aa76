"""Shared by the benchmarks: timing with repeats, machine description, peer models."""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

# Offline: the GPT-2 vocabulary pre-fetched beside the repository, as the tests use it.
_CACHE = Path(__file__).resolve().parents[2] / "shared" / "tiktoken_cache"
# The 1100-record seed dataset, when a copy lies beside the repository.
SEED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "instruction-data.json"
if "TIKTOKEN_CACHE_DIR" not in os.environ and _CACHE.is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(_CACHE)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a GPU's), so that a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """min / median / max seconds of ``fn()`` over ``repeats`` runs after ``warmup``."""
    from gpt2_lightning.backends.machine import timings

    times = timings(fn, repeats, warmup)
    return {"min": min(times), "median": statistics.median(times), "max": max(times)}


def machine() -> str:
    from gpt2_lightning.backends.machine import cpu_model

    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}{gpu}"


def model_pair(cfg):
    """Our ``GPTModel`` and Hugging Face's ``GPT2LMHeadModel`` (sdpa attention) of the shape
    ``cfg``, holding the same random weights, both in eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from gpt2_lightning.model.gpt import GPTModel
    from gpt2_lightning.model.pretrained import convert_hf_state_dict, load_state_dict_checked

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.context_length,
                                    n_embd=cfg.emb_dim, n_layer=cfg.n_layers, n_head=cfg.n_heads,
                                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    assert hf.config._attn_implementation == "sdpa", hf.config._attn_implementation
    ours = GPTModel(cfg)
    load_state_dict_checked(ours, convert_hf_state_dict(hf.state_dict()))
    return ours.eval(), hf.eval()


def fmt(stats: dict[str, float], scale: float = 1.0, unit: str = "s") -> str:
    return (f"{stats['median'] * scale:.3g} {unit} (min {stats['min'] * scale:.3g}, "
            f"max {stats['max'] * scale:.3g})")


def train_split(path: Path):
    """The training split of the records in ``path`` (the reference split), tokenised."""
    from gpt2_lightning.data.datamodule import InstructionDataModule

    datamodule = InstructionDataModule(path=str(path))
    datamodule.setup()
    return datamodule.datasets["train"]
