"""Time to first token of a conversation's turns through ``gpt2 serve`` (a random model of the
chosen shape, placed as the server places it, on 127.0.0.1), with the prefix cache and without
(``--prefix-cache-mb 0``): each turn resends the whole history, as chat clients do, and streams
its greedy answer. The answers of both servers must be the same.

    python bench/prefix_reuse.py [--model gpt2-small] [--turns 5] [--answer-tokens 48] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import requests
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import machine  # noqa: E402

from gpt2_lightning.apps.serve import create_app  # noqa: E402
from gpt2_lightning.data.prompts import get_style  # noqa: E402
from gpt2_lightning.generation.placement import placed_for_generation  # noqa: E402
from gpt2_lightning.model.gpt import GPTConfig, GPTModel  # noqa: E402
from tests.serving import serving  # noqa: E402

MESSAGE = ("Here is part {turn} of my question about planning a garden: which vegetables grow well together "
           "in a small raised bed that gets about six hours of sun each day, and how far apart should I plant them?")


def conversation(url: str, turns: int, answer_tokens: int) -> tuple[list[float], list[str]]:
    """Each turn's seconds to its first streamed token, and its answers."""
    messages, firsts, answers = [], [], []
    for turn in range(1, turns + 1):
        messages.append({"role": "user", "content": MESSAGE.format(turn=turn)})
        start = time.perf_counter()
        first, text = None, ""
        with requests.post(f"{url}/v1/chat/completions", stream=True, timeout=600, json={
                "messages": messages, "max_tokens": answer_tokens, "min_tokens": answer_tokens, "temperature": 0,
                "stream": True}) as response:
            for line in response.iter_lines():
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
                if delta and first is None:
                    first = time.perf_counter() - start
                text += delta or ""
        firsts.append(first)
        answers.append(text)
        messages.append({"role": "assistant", "content": text})
    return firsts, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gpt2-small", choices=["gpt2-small", "gpt2-medium"])
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--answer-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(machine())
    torch.manual_seed(0)
    model = placed_for_generation(GPTModel(GPTConfig.from_name(args.model)), device="cpu")
    last_turn, answers = {}, {}
    for name, megabytes in (("without", 0), ("with", 256)):
        times = []
        for _ in range(args.repeats):  # a fresh server each time: nothing kept from the last conversation
            with serving(create_app(model, get_style("alpaca"), name=args.model, prefix_cache_mb=megabytes)) as url:
                firsts, answers[name] = conversation(url, args.turns, args.answer_tokens)
            times.append(firsts)
        last_turn[name] = statistics.median(t[-1] for t in times)
        per_turn = ", ".join(f"{statistics.median(t[i] for t in times) * 1000:.0f}" for i in range(args.turns))
        print(f"{args.model} {name} the prefix cache: time to first token per turn (ms, median of {args.repeats}): "
              f"{per_turn}")
    print(f"turn {args.turns}: {last_turn['without'] * 1000:.0f} ms without, {last_turn['with'] * 1000:.0f} ms with "
          f"= {last_turn['without'] / last_turn['with']:.2f}x; answers identical: {answers['with'] == answers['without']}")


if __name__ == "__main__":
    main()
