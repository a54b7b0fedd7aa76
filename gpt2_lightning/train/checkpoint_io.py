"""How Lightning writes checkpoints here: whole or not at all, around the page cache."""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from gpt2_lightning.io import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but through a temporary file and a rename (a run killed
    while saving leaves the previous ``last.ckpt`` intact, never a truncated one) and around
    the page cache where the file system allows it (``DirectFile``: a gpt2-small ``last.ckpt``
    of 1.4 GiB added 0.7 s to a pass of training steps instead of 9.7 through the cache, on 2
    cores)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with atomic_write(path, binary=True, direct=True) as f:
            torch.save(checkpoint, f)
