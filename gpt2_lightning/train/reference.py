"""The reference model's log-probabilities of every preference, computed once before training
and kept with the run: only the policy is ever in memory.

The file (``<run>/reference-logprobs.npz``) holds, per split, each record's chosen and rejected
log-probability, and a key of everything they depend on but the weights (the tokens as fitted,
the average setting, the precision): a run resumed on other data, or with other settings,
finds them stale instead of using them.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import torch

from gpt2_lightning.data.preference import PreferenceCollator, PreferenceDataset
from gpt2_lightning.io import atomic_write

LogProbs = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (input_ids, targets) -> [rows]


def reference_key(datasets: Mapping[str, PreferenceDataset], average: bool, precision: str) -> str:
    """What the reference log-probabilities of ``datasets`` depend on, besides the weights."""
    digest = hashlib.sha256(repr((sorted(datasets), average, precision)).encode())
    for name in sorted(datasets):
        dataset = datasets[name]
        for array in (dataset.ids, dataset.offsets, dataset.cuts, dataset.kept):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def compute_reference(datasets: Mapping[str, PreferenceDataset], logprobs: LogProbs, batch_size: int,
                      device: torch.device, forward_context: Callable[[], AbstractContextManager]
                      ) -> dict[str, np.ndarray]:
    """Each split's ``[records, 2]`` log-probabilities (chosen, rejected; NaN for a record left
    out), from ``logprobs`` under ``forward_context`` (the training precision's autocast)."""
    collate = PreferenceCollator()
    result = {}
    for name, dataset in datasets.items():
        values = np.full((len(dataset.records), 2), np.nan)
        for start in range(0, len(dataset), batch_size):
            indices = range(start, min(start + batch_size, len(dataset)))
            batch = collate([dataset[i] for i in indices])
            with torch.no_grad(), forward_context():
                rows = logprobs(batch["input_ids"].to(device), batch["targets"].to(device)).double().cpu().numpy()
            values[dataset.kept[start:start + len(indices)]] = rows.reshape(2, -1).T
        result[name] = values
    return result


def read_reference(path: Path, key: str) -> dict[str, np.ndarray] | None:
    """The log-probabilities saved at ``path`` under ``key``; None when absent, unreadable or stale."""
    try:
        with np.load(path) as arrays:
            saved = {name: arrays[name] for name in arrays.files}
    except (OSError, ValueError, zipfile.BadZipFile):
        return None
    if str(saved.pop("key", "")) != key:
        return None
    return saved


def save_reference(path: Path, key: str, values: Mapping[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, key=np.array(key), **values)
    os.makedirs(path.parent, exist_ok=True)
    with atomic_write(path, binary=True) as f:
        f.write(buffer.getvalue())
