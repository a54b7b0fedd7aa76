"""Generation speed, gpt2-small shape (random weights), greedy, 60-token prompt, 128 new tokens:
ours with the KV cache, ours recomputing the whole context, Hugging Face GPT2LMHeadModel.generate;
and answering the 110-record test split in batches vs one by one.

    python bench/generation.py [--repeats 3] [--split]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fmt, machine, model_pair, timeit  # noqa: E402

from gpt2_lightning.devices import for_inference  # noqa: E402
from gpt2_lightning.generation.sampling import generate  # noqa: E402
from gpt2_lightning.model.gpt import GPTConfig  # noqa: E402

PROMPT, NEW = 60, 128


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--split", action="store_true", help="also answer the seed test split")
    args = parser.parse_args()
    print(machine())
    ours, hf = model_pair(GPTConfig.from_name("gpt2-small"))
    idx = torch.randint(0, 50257, (1, PROMPT), generator=torch.Generator().manual_seed(0))

    def hf_generate():
        return hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=NEW, min_new_tokens=NEW,
                           do_sample=False, pad_token_id=50256)

    fast = for_inference(copy.deepcopy(ours), "cpu")  # as respond / chat / serve run it
    with torch.inference_mode():
        rows = {
            f"ours, KV cache, {str(fast.tok_emb.weight.dtype)[6:]} (default)":
                timeit(lambda: generate(fast, idx, NEW, eos_id=None), args.repeats),
            "ours, KV cache, float32": timeit(lambda: generate(ours, idx, NEW, eos_id=None), args.repeats),
            "ours, no cache, float32":
                timeit(lambda: generate(ours, idx, NEW, eos_id=None, use_cache=False), args.repeats),
            "HF GPT2LMHeadModel.generate, float32": timeit(hf_generate, args.repeats),
        }
    for name, stats in rows.items():
        print(f"{name:40s} {NEW / stats['median']:6.1f} tokens/s  {fmt(stats)}")
    default, fp32, uncached, peer = (s["median"] for s in rows.values())
    print(f"KV cache speed-up (float32): {uncached / fp32:.2f}x; ours / HF: {peer / default:.2f}x (default), "
          f"{peer / fp32:.2f}x (float32)")
    if args.split:
        answer_split(fast)


def answer_split(model) -> None:
    from gpt2_lightning.data.records import load_records, split_records
    from gpt2_lightning.generation.respond import GenerationSettings, answers_as_they_finish

    seed = Path(__file__).resolve().parents[2] / "shared" / "data" / "instruction-data.json"
    test = split_records(load_records(seed))[2]
    for batch_size in (1, 8, 16):
        settings = GenerationSettings(max_new_tokens=64, batch_size=batch_size)

        def answer_all():  # as gpt2 respond does: rows take the next record as they free up
            list(answers_as_they_finish(model, test, "alpaca", settings))

        stats = timeit(answer_all, repeats=1, warmup=0)
        print(f"test split (110 records, <=64 new tokens), batch {batch_size:2d}: {fmt(stats)}")


if __name__ == "__main__":
    main()
