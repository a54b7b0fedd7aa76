"""Generation speed, gpt2-small shape (random weights), 60-token prompts, 128 new tokens:
ours (KV cache, as ``gpt2 respond`` runs it in that dtype) against Hugging Face
``GPT2LMHeadModel.generate`` holding the same weights in the same dtype, greedy and sampled
(temperature 1, top-k 50), batch 1 and 16; ours recomputing the whole context (no cache); and
answering the 110-record test split in batches vs one by one.

    python bench/generation.py [--device cpu|cuda] [--dtype float32 bfloat16] [--batch 1 16]
                               [--repeats 3] [--split]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SEED_DATA, fmt, machine, model_pair, synchronize, timeit  # noqa: E402

from gpt2_lightning.generation.placement import placed_for_generation  # noqa: E402
from gpt2_lightning.generation.sampling import generate  # noqa: E402
from gpt2_lightning.model.gpt import GPTConfig  # noqa: E402

PROMPT, NEW, TOP_K = 60, 128, 50


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--split", action="store_true", help="also answer the seed test split")
    args = parser.parse_args()
    print(machine(), flush=True)
    device = torch.device(args.device)
    ours, hf = model_pair(GPTConfig.from_name("gpt2-small"))
    default = placed_for_generation(copy.deepcopy(ours), device=device)  # as respond / chat / serve run it
    print(f"generation dtype chosen by measurement here: {str(default.tok_emb.weight.dtype)[6:]}", flush=True)

    def timed(fn):
        def run():
            fn()
            synchronize(device)
        return timeit(run, args.repeats)

    with torch.inference_mode():
        for dtype in args.dtype:
            ours_d = placed_for_generation(copy.deepcopy(ours), device=device, dtype=dtype)  # as respond runs it in that dtype
            hf_d = hf.to(device, getattr(torch, dtype))
            for batch in args.batch:
                idx = torch.randint(0, 50257, (batch, PROMPT), generator=torch.Generator().manual_seed(0)).to(device)
                for mode, temperature in (("greedy", 0.0), ("sampled", 1.0)):
                    generator = torch.Generator(device).manual_seed(0)
                    mine = timed(lambda: generate(ours_d, idx, NEW, temperature, top_k=TOP_K, eos_id=None,
                                                  generator=generator))
                    peer = timed(lambda: hf_d.generate(
                        idx, attention_mask=torch.ones_like(idx), max_new_tokens=NEW, min_new_tokens=NEW,
                        do_sample=temperature > 0, top_k=TOP_K, temperature=temperature or None,
                        pad_token_id=50256))
                    rate, peer_rate = (batch * NEW / s["median"] for s in (mine, peer))
                    print(f"{dtype:8s} batch {batch:2d} {mode:7s}: ours {rate:7.1f} tokens/s, HF generate "
                          f"{peer_rate:7.1f} tokens/s: {rate / peer_rate:.2f}x  (ours {fmt(mine)}; HF {fmt(peer)})",
                          flush=True)
        fp32 = placed_for_generation(ours, device=device, dtype="float32")
        idx = torch.randint(0, 50257, (1, PROMPT), generator=torch.Generator().manual_seed(0)).to(device)
        cached = timed(lambda: generate(fp32, idx, NEW, eos_id=None))
        uncached = timed(lambda: generate(fp32, idx, NEW, eos_id=None, use_cache=False))
        print(f"float32 batch 1 greedy: KV cache {NEW / cached['median']:.1f} tokens/s, recomputing the context "
              f"{NEW / uncached['median']:.1f}: {uncached['median'] / cached['median']:.2f}x", flush=True)
    if args.split:
        answer_split(default)


def answer_split(model) -> None:
    from gpt2_lightning.data.prompts import get_style
    from gpt2_lightning.data.records import load_records, split_records
    from gpt2_lightning.generation.respond import answers_as_they_finish
    from gpt2_lightning.generation.sampling import SamplingParams

    test = split_records(load_records(SEED_DATA))[2]
    for batch_size in (1, 8, 16):
        def answer_all():  # as gpt2 respond does: rows take the next record as they free up
            list(answers_as_they_finish(model, test, get_style("alpaca"), SamplingParams(64), batch_size))

        stats = timeit(answer_all, repeats=1, warmup=0)
        print(f"test split (110 records, <=64 new tokens), batch {batch_size:2d}: {fmt(stats)}", flush=True)


if __name__ == "__main__":
    main()
