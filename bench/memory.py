"""Peak memory of one training step (forward + backward + AdamW), batch 8 x 256 tokens, for the
gpt2-small and gpt2-medium shapes: ours (as InstructionTuner trains) vs Hugging Face
GPT2LMHeadModel. Each measurement runs in a fresh process (peak resident set size on CPU,
torch.cuda.max_memory_allocated on a GPU).

    python bench/memory.py [--precision fp32 bf16]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, model_pair  # noqa: E402

from gpt2_lightning.backends.cpu.allocator import keep_freed_memory  # noqa: E402
from gpt2_lightning.model.gpt import GPTConfig  # noqa: E402
from gpt2_lightning.train.loss import masked_lm_loss  # noqa: E402


def measure(name: str, impl: str, precision: str) -> float:
    """GiB at the peak of two training steps, in this process."""
    if impl == "ours":
        keep_freed_memory()  # as train.py runs: memory is reused rather than returned, the peak counts
    ours, hf = model_pair(GPTConfig.from_name(name))
    model = (ours if impl == "ours" else hf).train()
    del ours, hf
    idx = torch.randint(0, 50257, (8, 256))
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=impl == "ours")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = masked_lm_loss(model, idx, torch.roll(idx, -1, 1))[0] if impl == "ours" else \
                model(idx, labels=idx).loss
        loss.backward()
        optimizer.step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--one", nargs=3, metavar=("NAME", "IMPL", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one)))
        return
    print(machine())
    for precision in args.precision:
        for name in ("gpt2-small", "gpt2-medium"):
            peaks = {impl: float(subprocess.run([sys.executable, __file__, "--one", name, impl, precision],
                                                capture_output=True, text=True, check=True).stdout.split()[-1])
                     for impl in ("ours", "hf")}
            print(f"{precision} {name:12s} peak RSS: ours {peaks['ours']:.2f} GiB, HF {peaks['hf']:.2f} GiB")


if __name__ == "__main__":
    main()
