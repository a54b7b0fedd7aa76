"""``model.compile=true``: the training loss through ``torch.compile`` against eager, on the
shuffled seed-data batches of gpt2-small (random init), fused AdamW, one process. Reports the
compile time (the first batches: every new batch shape may compile again) and the steady-state
time per training step over the same batches for both.

    python bench/compile.py [--data ../shared/data/instruction-data.json] [--batches 12] [--dtype bf16|fp32]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SEED_DATA, machine, train_split  # noqa: E402

from gpt2_lightning.backends.cpu.allocator import keep_freed_memory  # noqa: E402
from gpt2_lightning.data.dataset import InstructionCollator  # noqa: E402
from gpt2_lightning.data.sampler import LengthGroupedBatchSampler  # noqa: E402
from gpt2_lightning.model.gpt import GPTConfig, GPTModel  # noqa: E402
from gpt2_lightning.train.loss import masked_lm_loss  # noqa: E402


def steps(loss_fn, batches, dtype) -> list[float]:
    """Seconds of each training step (forward, backward, fused AdamW) over ``batches``."""
    torch.manual_seed(0)
    model = GPTModel(GPTConfig.from_name("gpt2-small")).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1, fused=True)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
    times = []
    for batch in batches:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss, _ = loss_fn(model, batch["input_ids"], batch["targets"])
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=SEED_DATA)
    parser.add_argument("--batches", type=int, default=12, help="distinct batches, each timed twice")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="fp32")
    args = parser.parse_args()
    print(machine())
    keep_freed_memory()  # as train.py does
    dataset = train_split(args.data)
    collate = InstructionCollator(max_length=1024)
    order = list(LengthGroupedBatchSampler(dataset.lengths, 8, seed=1, group_by_length=False))[:args.batches]
    batches = [collate([dataset[i] for i in batch]) for batch in order]
    eager = steps(masked_lm_loss, batches * 2, args.dtype)
    compiled = steps(torch.compile(masked_lm_loss, dynamic=True), batches * 2, args.dtype)
    first, second = slice(0, len(batches)), slice(len(batches), None)
    print(f"{args.dtype}, {len(batches)} shuffled batches of 8, each run twice")
    print(f"eager:    {statistics.median(eager[second]):.3f} s per step (median of the second pass)")
    print(f"compiled: {statistics.median(compiled[second]):.3f} s per step (median of the second pass); "
          f"first pass {sum(compiled[first]):.1f} s in all against eager's {sum(eager[first]):.1f} s")


if __name__ == "__main__":
    main()
