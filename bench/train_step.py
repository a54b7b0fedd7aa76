"""Training-step throughput of gpt2-small (random weights): forward + backward + AdamW.

Implementations, all holding the same weights, each with the same fused AdamW, batches and
allocator setting, in one process:
  ours      GPTModel + masked_lm_loss, as InstructionTuner trains (in fp32 on a CPU, its linear
            layers through the kernels the machine's calibration measured fastest)
  hf        Hugging Face GPT2LMHeadModel (sdpa) and its own loss function
  nanogpt   GPT-2 the way nanoGPT builds it (bench/nanogpt.py)
  NAME-compiled   the same through torch.compile (ours: the loss, with dynamic shapes, as
                  ``model.compile=true`` does; the peers: the model, as nanoGPT's train.py does)
  NAME-graphs     the same through torch.compile(mode="reduce-overhead"): on a GPU, CUDA graphs
                  replay each step's kernels without the host launching them one by one (a
                  CPU compiles it as NAME-compiled)
Batches:
  random    --batch x --seq random tokens, every position scored (MFU against the device's
            measured peak matmul throughput in that dtype: on a CPU in fp32, the faster of
            torch's F.linear and oneDNN)
  seed      shuffled batches of 8 training records of the seed data, padded to the longest,
            padding not scored (what ``train.py`` trains on)
Each implementation first runs every batch once (warm-up, compiling), then the implementations
take turns at --repeats timed passes; tokens/s counts scored targets over the median pass.

    python bench/train_step.py [--device cpu|cuda] [--batches random seed] [--precision fp32 bf16]
                               [--impl ours hf nanogpt nanogpt-compiled] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SEED_DATA, machine, model_pair, synchronize, train_split  # noqa: E402
from nanogpt import nanogpt_from  # noqa: E402

from gpt2_lightning.backends import prepare_for_training, training_plan  # noqa: E402
from gpt2_lightning.backends.cpu.allocator import keep_freed_memory  # noqa: E402
from gpt2_lightning.backends.cpu.onednn import onednn_linear  # noqa: E402
from gpt2_lightning.data.dataset import InstructionCollator  # noqa: E402
from gpt2_lightning.data.sampler import LengthGroupedBatchSampler  # noqa: E402
from gpt2_lightning.model.gpt import GPTConfig  # noqa: E402
from gpt2_lightning.train.loss import masked_lm_loss  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# An implementation's name suffix -> its torch.compile mode ("": eager)
COMPILE_MODES = {"": None, "compiled": "default", "graphs": "reduce-overhead"}


def peak_matmul_flops(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of the fastest of 20 square products (the fewest seconds: the least disturbed; one
    Zen 5 ran the same bf16 product at 400-780 GFLOP/s within seconds)."""
    n = 2048 if device.type == "cpu" else 8192
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    products = [lambda: a @ b]
    if device.type == "cpu" and dtype == torch.float32:
        products.append(lambda: onednn_linear(a, b))
    times = []
    for product in products:
        for _ in range(20):
            start = time.perf_counter()
            product()
            synchronize(device)
            times.append(time.perf_counter() - start)
    return 2 * n ** 3 / min(times)


def training_flops_per_token(cfg: GPTConfig, seq: int) -> float:
    """6 x (parameters doing matmuls) + attention scores and values (PaLM's accounting)."""
    params = 12 * cfg.n_layers * cfg.emb_dim ** 2 + cfg.vocab_size * cfg.emb_dim
    return 6 * params + 12 * cfg.n_layers * cfg.emb_dim * seq


def loss_function(name: str, cfg: GPTConfig, device: torch.device, precision: str):
    """``(model, loss(x, y))`` for implementation ``name``; y: the target of each position."""
    base, _, how = name.partition("-")
    if base not in ("ours", "hf", "nanogpt") or how not in COMPILE_MODES:
        raise SystemExit(f"unknown implementation {name!r}")
    compiled = functools.partial(torch.compile, mode=COMPILE_MODES[how]) if how else lambda run, **_: run
    ours, hf = model_pair(cfg)
    if base == "ours":
        model = ours.to(device).train()
        plan = training_plan(device, "32-true" if precision == "fp32" else "bf16-mixed", cfg.emb_dim)
        kernels = prepare_for_training(model, plan)
        loss = functools.partial(masked_lm_loss, head_loss=kernels.head_loss)
        loss = compiled(loss, dynamic=True)
        return model, lambda x, y: loss(model, x, y)[0]
    if base == "hf":
        model = hf.to(device).train()
        run = compiled(model)
        return model, lambda x, y: model.loss_function(run(x).logits, y, cfg.vocab_size, shift_labels=y)
    model = nanogpt_from(ours).to(device).train()  # nanogpt
    return model, compiled(model)


def training_step(name: str, cfg: GPTConfig, device: torch.device, precision: str):
    """``(model, optimizer, step(x, y))``: one training step (forward, backward, fused AdamW) of
    implementation ``name`` in ``precision``, with the model and optimizer it trains."""
    model, loss_fn = loss_function(name, cfg, device, precision)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1, fused=True)
    autocast = (torch.autocast(device.type, dtype=DTYPES[precision]) if precision != "fp32"
                else contextlib.nullcontext())

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        if name.endswith("-graphs"):  # the last step's graph outputs are done with
            torch.compiler.cudagraph_mark_step_begin()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(x, y)
        loss.backward()
        optimizer.step()

    return model, optimizer, step


def trainer(name: str, cfg: GPTConfig, device: torch.device, precision: str):
    """``train(batches)``: training steps of implementation ``name`` over ``batches`` in ``precision``."""
    _, _, step = training_step(name, cfg, device, precision)

    def train(batches) -> None:
        for x, y in batches:
            step(x, y)

    return train


def timed_passes(names, cfg, batches, precision, device, repeats) -> dict[str, list[float]]:
    """Seconds of each timed pass over ``batches`` per implementation, after one untimed pass
    each; the passes take turns, so that drift in the machine touches every side alike."""

    def one_pass(train) -> float:
        synchronize(device)
        start = time.perf_counter()
        train(batches)
        synchronize(device)
        return time.perf_counter() - start

    sides = {}
    for name in names:
        sides[name] = trainer(name, cfg, device, precision)
        one_pass(sides[name])
    times = {name: [] for name in names}
    for _ in range(repeats):
        for name, train in sides.items():
            times[name].append(one_pass(train))
    return times


def random_batches(cfg, batch, seq, steps, device):
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (steps, batch, seq + 1), generator=generator)
    return [(t[:, :-1].contiguous().to(device), t[:, 1:].contiguous().to(device)) for t in tokens]


def seed_batches(path: Path, count: int, device):
    dataset = train_split(path)
    collate = InstructionCollator(max_length=1024)
    order = list(LengthGroupedBatchSampler(dataset.lengths, 8, seed=1, group_by_length=False))[:count]
    batches = [collate([dataset[i] for i in rows]) for rows in order]
    return [(b["input_ids"].to(device), b["targets"].to(device)) for b in batches]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", nargs="+", choices=["random", "seed"], default=["random", "seed"])
    parser.add_argument("--precision", nargs="+", choices=list(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--impl", nargs="+", default=["ours", "hf", "nanogpt", "nanogpt-compiled"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8, help="rows of a random batch")
    parser.add_argument("--seq", type=int, default=256, help="tokens of a random batch's row")
    parser.add_argument("--steps", type=int, default=1, help="random batches per timed pass")
    parser.add_argument("--seed-batches", type=int, default=8, help="seed-data batches per timed pass")
    parser.add_argument("--data", type=Path, default=SEED_DATA)
    parser.add_argument("--default-allocator", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    kept = device.type == "cpu" and not args.default_allocator and keep_freed_memory()
    print(f"{machine()}; glibc keeps freed memory: {kept}", flush=True)
    cfg = GPTConfig.from_name("gpt2-small")
    for kind in args.batches:
        batches = (random_batches(cfg, args.batch, args.seq, args.steps, device) if kind == "random"
                   else seed_batches(args.data, args.seed_batches, device))
        scored = sum(int((y != -100).sum()) for _, y in batches)
        positions = sum(y.numel() for _, y in batches)
        print(f"\n{kind} batches: {len(batches)} of {tuple(batches[0][0].shape)}, {scored} scored targets of "
              f"{positions} positions a pass", flush=True)
        for precision in args.precision:
            peak = peak_matmul_flops(device, DTYPES[precision])
            flops = training_flops_per_token(cfg, args.seq) * scored
            rates = {}
            for name, times in timed_passes(args.impl, cfg, batches, precision, device, args.repeats).items():
                median = statistics.median(times)
                rates[name] = scored / median
                mfu = f"  MFU {flops / median / peak:5.1%}" if kind == "random" else ""
                print(f"{kind} {precision} {name:18s} {rates[name]:9.0f} scored tokens/s{mfu}  pass {median:.3f} s "
                      f"(min {min(times):.3f}, max {max(times):.3f})", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            peers = {name: rate for name, rate in rates.items() if not name.startswith("ours")}
            if peers:
                best = max(peers, key=peers.get)
                ratios = "; ".join(f"{name} / best peer ({best}): {rate / peers[best]:.2f}x"
                                   for name, rate in rates.items() if name.startswith("ours"))
                print(f"{kind} {precision}: peak matmul {peak / 1e12:.3g} TFLOP/s; {ratios}", flush=True)


if __name__ == "__main__":
    main()
