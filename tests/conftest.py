"""Shared fixtures: the offline tokenizer cache, the seed dataset, tiny configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"

# The GPT-2 vocabulary, pre-fetched beside the repo, keeps the tests off the network.
if "TIKTOKEN_CACHE_DIR" not in os.environ and (SHARED / "tiktoken_cache").is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(SHARED / "tiktoken_cache")


@pytest.fixture(scope="session")
def seed_dataset() -> Path:
    """The 1100-record seed dataset, when a copy lies beside the repo."""
    path = SHARED / "data" / "instruction-data.json"
    if not path.is_file():
        pytest.skip("seed dataset not present beside the repository")
    return path


def compose_train(output_dir: Path, *overrides: str):
    """``conf/train.yaml`` composed as ``train.py`` would, writing into ``output_dir``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from gpt2_lightning.resources import config_dir, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose("train.yaml", overrides=list(overrides), return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg["hydra"]
    return cfg


TINY_RUN = ("model=tiny", "data=sample", "trainer=cpu", "callbacks=default", "respond=false",
            "plot=false", "export=false", "test=false",
            "trainer.enable_model_summary=false", "callbacks.progress_bar.refresh_rate=0")


def run_train_py(*args: str, cwd: Path = REPO_ROOT, timeout: float = 600):
    """``python train.py ARGS`` in a real subprocess; returns the CompletedProcess."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> Path:
    """A tiny random GPT-2 exported as model.safetensors + config.json (alpaca style)."""
    import torch

    from gpt2_lightning.export.folder import export_model
    from gpt2_lightning.model.gpt import GPTConfig, GPTModel

    torch.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=50257, context_length=256, emb_dim=64, n_layers=2, n_heads=4))
    return export_model(model, tmp_path_factory.mktemp("export"), prompt_style="alpaca")


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """Pretrained weights of ``model=tiny``'s shape, as Hugging Face saves GPT-2 (a folder with
    model.safetensors and config.json): the base for LoRA runs (``model.weights=...``)."""
    from gpt2_lightning.model.gpt import GPTConfig
    from tests.hf_reference import hf_gpt2

    folder = tmp_path_factory.mktemp("tiny-base")
    hf_gpt2(GPTConfig(vocab_size=50257, context_length=256, emb_dim=64, n_layers=2, n_heads=4), seed=5) \
        .save_pretrained(folder, safe_serialization=True)
    return folder
