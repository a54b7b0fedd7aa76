"""Where a training step's time goes: per-op self time (``torch.profiler``) of gpt2-small's
forward + backward + AdamW, ours against the peers of ``train_step.py``, side by side.

The sides are set up as ``train_step.py`` sets them up (same weights, batches, fused AdamW,
allocator setting); each runs untimed passes until one page-faults no memory in, then
``--steps`` profiled ones. The table lists the ops by the largest gap between ours and the
first peer, in ms per step.

    python bench/profile_step.py [--batches random|seed] [--precision fp32|bf16]
                                 [--impl ours nanogpt] [--top 25]
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SEED_DATA, machine  # noqa: E402
from train_step import DTYPES, random_batches, seed_batches, trainer  # noqa: E402

from gpt2_lightning.backends.cpu.allocator import keep_freed_memory  # noqa: E402
from gpt2_lightning.backends.machine import cpu_identity  # noqa: E402
from gpt2_lightning.model.gpt import GPTConfig  # noqa: E402


def op_times(name: str, cfg, batches, precision: str, steps: int) -> dict[str, float]:
    """Self CPU ms per step of each op for implementation ``name``, once its memory is paged in."""
    train = trainer(name, cfg, torch.device("cpu"), precision)
    warm_up(train, batches)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            train(batches)
    per_step = steps * len(batches)
    return {event.key: event.self_cpu_time_total / 1e3 / per_step for event in prof.key_averages()}


def warm_up(train, batches, most: int = 5) -> None:
    """Untimed passes until one page-faults no memory in (at most ``most``): the first steps of
    a process fault in hundreds of MB (the kernel zeroing each page), which the profile would
    put on whichever op first writes there (the LM head's logits, mostly)."""
    for _ in range(most):
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        train(batches)
        if resource.getrusage(resource.RUSAGE_SELF).ru_minflt == faults:
            return


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", choices=["random", "seed"], default="random")
    parser.add_argument("--precision", choices=list(DTYPES), default="fp32")
    parser.add_argument("--impl", nargs="+", default=["ours", "nanogpt"])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--seed-batches", type=int, default=4)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    keep_freed_memory()
    print(f"{machine()} [{cpu_identity()}]")
    cfg = GPTConfig.from_name("gpt2-small")
    batches = (random_batches(cfg, 8, 256, 1, "cpu") if args.batches == "random"
               else seed_batches(SEED_DATA, args.seed_batches, "cpu"))
    times = {name: op_times(name, cfg, batches, args.precision, args.steps) for name in args.impl}
    ours, peer = times[args.impl[0]], times[args.impl[1]]
    ops = sorted(set(ours) | set(peer), key=lambda op: -abs(ours.get(op, 0) - peer.get(op, 0)))
    print(f"{'op':48s}" + "".join(f"{name:>14s}" for name in args.impl) + "  (self ms per step)")
    for op in ops[:args.top]:
        print(f"{op[:48]:48s}" + "".join(f"{times[name].get(op, 0):14.1f}" for name in args.impl))
    print(f"{'total':48s}" + "".join(f"{sum(times[name].values()):14.1f}" for name in args.impl))


if __name__ == "__main__":
    main()
