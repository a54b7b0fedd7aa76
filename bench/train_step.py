"""Training-step throughput, gpt2-small shape (random weights), batch 8 x 256 tokens:
forward + backward + AdamW, ours (GPTModel + masked loss, as InstructionTuner trains) vs
Hugging Face GPT2LMHeadModel (sdpa, its own loss); both with the same fused AdamW, the same
batches and the same allocator setting, in one process; fp32 and bf16 autocast. MFU is against this machine's measured peak matmul throughput.
Both run with glibc keeping freed memory, as ``train.py`` runs (``--default-allocator``: not).

    python bench/train_step.py [--repeats 3] [--batch 8] [--seq 256]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fmt, machine, model_pair, timeit  # noqa: E402

from gpt2_lightning.allocator import keep_freed_memory  # noqa: E402
from gpt2_lightning.model.gpt import GPTConfig  # noqa: E402
from gpt2_lightning.train.loss import masked_lm_loss  # noqa: E402


def peak_matmul_flops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    stats = timeit(lambda: a @ b, repeats, warmup=2)
    return 2 * n ** 3 / stats["min"]


def training_flops_per_token(cfg: GPTConfig, seq: int) -> float:
    """6 x (parameters doing matmuls) + attention scores and values (PaLM's accounting)."""
    params = 12 * cfg.n_layers * cfg.emb_dim ** 2 + cfg.vocab_size * cfg.emb_dim
    return 6 * params + 12 * cfg.n_layers * cfg.emb_dim * seq


def step_fn(model, optimizer, idx, targets, precision: str, ours: bool):
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            if ours:
                loss, _ = masked_lm_loss(model, idx, targets)
            else:
                loss = model(idx, labels=targets).loss
        loss.backward()
        optimizer.step()
    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--default-allocator", action="store_true")
    args = parser.parse_args()
    kept = not args.default_allocator and keep_freed_memory()
    print(f"{machine()}; glibc keeps freed memory: {kept}")
    cfg = GPTConfig.from_name("gpt2-small")
    tokens = args.batch * args.seq
    flops = training_flops_per_token(cfg, args.seq) * tokens
    idx = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    for precision in args.precision:
        peak = peak_matmul_flops(torch.float32 if precision == "fp32" else torch.bfloat16)
        results = {}
        for name in ("ours", "hf"):
            ours, hf = model_pair(cfg)
            model = (ours if name == "ours" else hf).train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1, fused=True)
            targets = torch.roll(idx, -1, dims=1) if name == "ours" else idx  # HF shifts labels itself
            results[name] = timeit(step_fn(model, optimizer, idx, targets, precision, name == "ours"),
                                   args.repeats)
            del ours, hf, model, optimizer
        for name, stats in results.items():
            rate = tokens / stats["median"]
            mfu = flops / stats["median"] / peak
            print(f"{precision} {name:4s}: {rate:7.0f} tokens/s  MFU {mfu:5.1%}  step {fmt(stats)}")
        print(f"{precision} peak matmul {peak / 1e9:.0f} GFLOP/s; ours / HF: "
              f"{results['hf']['median'] / results['ours']['median']:.2f}x")


if __name__ == "__main__":
    main()
