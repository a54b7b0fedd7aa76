"""What a full checkpoint write costs training: gpt2-small (random weights) training steps on
shuffled seed-data batches, one pass with one full checkpoint (weights + AdamW state, as
``last.ckpt`` holds: 1.4 GiB) saved after its first step,
  direct  through the writer ``train.py`` uses (``AtomicCheckpointIO``: around the page cache)
  cached  the same file through the page cache (``torch.save`` into ``atomic_write``)
against the same pass with no save; a side's extra seconds over ``none`` are what the save
cost. One model, optimizer and set of batches; the sides take turns.

    python bench/checkpoint_writes.py [--data ../shared/data/instruction-data.json] [--precision bf16]
                                      [--steps 12] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SEED_DATA, machine  # noqa: E402
from train_step import DTYPES, seed_batches, training_step  # noqa: E402

from gpt2_lightning.backends.cpu.allocator import keep_freed_memory  # noqa: E402
from gpt2_lightning.io import atomic_write  # noqa: E402
from gpt2_lightning.model.gpt import GPTConfig  # noqa: E402
from gpt2_lightning.train.checkpoint_io import AtomicCheckpointIO  # noqa: E402


def cached_write(checkpoint, path) -> None:
    with atomic_write(path, binary=True) as f:
        torch.save(checkpoint, f)


SIDES = ("none", "direct", "cached")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=SEED_DATA)
    parser.add_argument("--precision", choices=DTYPES, default="bf16")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(machine())
    keep_freed_memory()
    device = torch.device("cpu")
    model, optimizer, step = training_step("ours", GPTConfig.from_name("gpt2-small"), device, args.precision)
    batches = seed_batches(args.data, args.steps, device)
    writers = {"direct": AtomicCheckpointIO().save_checkpoint, "cached": cached_write}

    def one_pass(side: str, path: Path) -> float:
        start = time.perf_counter()
        for i, (x, y) in enumerate(batches):
            step(x, y)
            if i == 0 and side in writers:
                writers[side]({"state_dict": model.state_dict(), "optimizer_states": [optimizer.state_dict()]}, path)
        return time.perf_counter() - start

    times = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "last.ckpt"
        for side in SIDES:  # warm-up: every side once
            one_pass(side, path)
        for _ in range(args.repeats):
            for side in SIDES:
                times[side].append(one_pass(side, path))
        size = path.stat().st_size / 2**30
    none = statistics.median(times["none"])
    print(f"{args.steps} seed batches of 8, gpt2-small, {args.precision}; one {size:.2f} GiB checkpoint a pass")
    for side in SIDES:
        median = statistics.median(times[side])
        print(f"  {side:10s} {median:6.2f} s a pass (min {min(times[side]):.2f}, max {max(times[side]):.2f})"
              + ("" if side == "none" else f"; the save cost {median - none:+.2f} s"))


if __name__ == "__main__":
    main()
