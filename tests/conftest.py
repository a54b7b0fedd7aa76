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
