"""Padding and epoch time on the seed data (935 training records, batch 8): length-grouped
batches (the default) vs plain shuffled batches. The epoch time is forward + backward +
fused AdamW of the gpt2-small shape (random init), bf16 autocast where it measures faster here (as precision=auto chooses).

    python bench/padding.py [--data ../shared/data/instruction-data.json] [--max-batches N]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SEED_DATA, machine, train_split  # noqa: E402

from gpt2_lightning.backends import training_plan  # noqa: E402
from gpt2_lightning.backends.cpu.allocator import keep_freed_memory  # noqa: E402
from gpt2_lightning.data.dataset import InstructionCollator  # noqa: E402
from gpt2_lightning.data.sampler import LengthGroupedBatchSampler, padding_fraction  # noqa: E402
from gpt2_lightning.model.gpt import GPTConfig, GPTModel  # noqa: E402
from gpt2_lightning.train.loss import masked_lm_loss  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=SEED_DATA)
    parser.add_argument("--max-batches", type=int, help="time only this many batches of each epoch")
    args = parser.parse_args()
    print(machine())
    keep_freed_memory()  # as train.py does
    dataset = train_split(args.data)
    collate = InstructionCollator(max_length=1024)
    bf16 = training_plan("cpu").precision == "bf16-mixed"  # as the training job chooses
    for grouped in (True, False):
        batches = list(LengthGroupedBatchSampler(dataset.lengths, 8, seed=1, group_by_length=grouped))
        padding = padding_fraction(dataset.lengths, batches)
        torch.manual_seed(0)
        model = GPTModel(GPTConfig.from_name("gpt2-small")).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1, fused=True)
        timed = batches[:args.max_batches] if args.max_batches else batches
        start = time.perf_counter()
        for batch in timed:
            tensors = collate([dataset[i] for i in batch])
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                loss, _ = masked_lm_loss(model, tensors["input_ids"], tensors["targets"])
            loss.backward()
            optimizer.step()
        elapsed = (time.perf_counter() - start) * len(batches) / len(timed)
        name = "length-grouped" if grouped else "shuffled"
        print(f"{name:15s} padding {padding:6.1%}  epoch {elapsed:6.1f} s ({len(batches)} batches"
              f"{', extrapolated from ' + str(len(timed)) if len(timed) < len(batches) else ''}, "
              f"{'bf16' if bf16 else 'fp32'})")


if __name__ == "__main__":
    main()
