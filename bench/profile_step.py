"""Where a training step's time goes: the wall-clock time of each aten op as it is dispatched
(forward, backward and optimizer) in gpt2-small's step, ours against the peers of
``train_step.py``, side by side.

The times come from a dispatch mode that reads the clock around every op, not from
``torch.profiler``: the profiler's per-op CPU times do not add up to the step it slows, and it
put 76 ms a batch on the LM head's gradient block copies that took 5 on the wall clock (bf16,
seed batches, AMD EPYC Zen 4). Each op's time is its own: an op called inside another's kernel
counts in the outer one. The sides are set up as ``train_step.py`` sets them up (same weights,
batches, fused AdamW, allocator setting); each runs untimed passes until one page-faults no
memory in, then ``--steps`` timed ones. The table lists the ops by the largest gap between ours
and the first peer, in ms per step.

    python bench/profile_step.py [--batches random|seed] [--precision fp32|bf16]
                                 [--impl ours nanogpt] [--top 25]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SEED_DATA, machine  # noqa: E402
from train_step import DTYPES, random_batches, seed_batches, trainer  # noqa: E402

from gpt2_lightning.backends.cpu.allocator import keep_freed_memory  # noqa: E402
from gpt2_lightning.backends.machine import cpu_identity  # noqa: E402
from gpt2_lightning.model.gpt import GPTConfig  # noqa: E402


class OpClock(TorchDispatchMode):
    """Seconds of each aten op (by name, all overloads together) dispatched while it is on."""

    def __init__(self):
        super().__init__()
        self.seconds: dict[str, float] = defaultdict(float)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        self.seconds[str(func.overloadpacket)] += time.perf_counter() - start
        return out


def op_times(name: str, cfg, batches, precision: str, steps: int) -> tuple[dict[str, float], float]:
    """Wall-clock ms per step of each op for implementation ``name``, once its memory is paged
    in; and a step's ms with no clock around its ops."""
    train = trainer(name, cfg, torch.device("cpu"), precision)
    warm_up(train, batches)
    start = time.perf_counter()
    train(batches)
    plain = (time.perf_counter() - start) * 1e3 / len(batches)
    clock = OpClock()
    with clock:
        for _ in range(steps):
            train(batches)
    per_step = steps * len(batches)
    return {op: seconds * 1e3 / per_step for op, seconds in clock.seconds.items()}, plain


def warm_up(train, batches, most: int = 5) -> None:
    """Untimed passes until one page-faults no memory in (at most ``most``): the first steps of
    a process fault in hundreds of MB (the kernel zeroing each page), which the clock would
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
    if any("-" in name for name in args.impl):  # a dispatch mode around a compiled graph runs it eagerly
        parser.error("--impl: eager sides only (ours, hf, nanogpt); train_step.py times the compiled ones")
    keep_freed_memory()
    print(f"{machine()} [{cpu_identity()}]")
    cfg = GPTConfig.from_name("gpt2-small")
    batches = (random_batches(cfg, 8, 256, 1, "cpu") if args.batches == "random"
               else seed_batches(SEED_DATA, args.seed_batches, "cpu"))
    measured = {name: op_times(name, cfg, batches, args.precision, args.steps) for name in args.impl}
    times = {name: ops for name, (ops, _) in measured.items()}
    ours, peer = times[args.impl[0]], times[args.impl[1]]
    ops = sorted(set(ours) | set(peer), key=lambda op: -abs(ours.get(op, 0) - peer.get(op, 0)))
    print(f"{'op':48s}" + "".join(f"{name:>14s}" for name in args.impl) + "  (wall-clock ms per step)")
    for op in ops[:args.top]:
        print(f"{op[:48]:48s}" + "".join(f"{times[name].get(op, 0):14.1f}" for name in args.impl))
    print(f"{'all ops':48s}" + "".join(f"{sum(times[name].values()):14.1f}" for name in args.impl))
    print(f"{'a step with no clock around its ops':48s}" + "".join(f"{plain:14.1f}" for _, plain in measured.values()))


if __name__ == "__main__":
    main()
