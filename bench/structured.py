"""The cost of a JSON-constrained row in the batch engine (``gpt2 serve``'s ``response_format``):
B rows decode together (a random model of the chosen shape, as ``gpt2 serve`` places it), one of
them held to a JSON schema by xgrammar. Prints the engine's seconds per step with the constrained
row and without it, the time the grammar itself takes per constrained token (masking the logits
and accepting the token), and that time as a share of a step: what a constrained answer's tokens
cost more than a free one's.

    python bench/structured.py [--model gpt2-small] [--batch 1 8] [--tokens 48]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from gpt2_lightning.generation.constraint import JsonConstraint  # noqa: E402
from gpt2_lightning.generation.engine import BatchEngine, Generation  # noqa: E402
from gpt2_lightning.generation.placement import placed_for_generation  # noqa: E402
from gpt2_lightning.generation.sampling import SamplingParams  # noqa: E402
from gpt2_lightning.model.gpt import GPTConfig, GPTModel  # noqa: E402
from gpt2_lightning.model.tokenizer import encode  # noqa: E402

# Keys and values of any text: an answer that a random model keeps going for many tokens.
OPEN_OBJECT = {"type": "object", "additionalProperties": {"type": "string"}}


class TimedConstraint(JsonConstraint):
    """A ``JsonConstraint`` that adds up the seconds it spends and the tokens it sees."""

    def __init__(self, schema):
        super().__init__(schema)
        self.seconds, self.tokens = 0.0, 0

    def mask(self, logits):
        start = time.perf_counter()
        masked = super().mask(logits)
        self.seconds += time.perf_counter() - start
        return masked

    def accept(self, token):
        start = time.perf_counter()
        super().accept(token)
        self.seconds += time.perf_counter() - start
        self.tokens += 1


def decode_batch(model, batch: int, tokens: int, constrained: bool) -> tuple[float, TimedConstraint | None]:
    """Seconds per engine step while ``batch`` rows decode ``tokens`` each (row 0 constrained)."""
    prompt = encode("Describe a shirt as JSON:")
    done = [threading.Event() for _ in range(batch)]
    constraint = TimedConstraint(OPEN_OBJECT) if constrained else None
    with BatchEngine(model, max_batch_size=batch) as engine:
        start = time.perf_counter()
        for row in range(batch):
            free = SamplingParams(tokens, min_new_tokens=tokens)  # free rows run the whole length
            seq = Generation(prompt, SamplingParams(tokens) if constraint and row == 0 else free,
                             on_token=lambda _: None, on_finish=lambda _, d=done[row]: d.set())
            seq.constraint = constraint if row == 0 else None
            engine.submit(seq)
        for event in done:
            event.wait()
        elapsed = time.perf_counter() - start
    return elapsed / tokens, constraint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gpt2-small", choices=["gpt2-small", "gpt2-medium"])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    print(machine())
    torch.manual_seed(0)
    model = placed_for_generation(GPTModel(GPTConfig.from_name(args.model)), device="cpu")
    decode_batch(model, 1, 4, constrained=True)  # warm up: the grammar compiler over the vocabulary
    for batch in args.batch:
        free, _ = decode_batch(model, batch, args.tokens, constrained=False)
        with_row, constraint = decode_batch(model, batch, args.tokens, constrained=True)
        per_token = constraint.seconds / max(1, constraint.tokens)
        print(f"{args.model}, batch {batch}: {free * 1000:.1f} ms/step free, {with_row * 1000:.1f} ms/step with one "
              f"constrained row ({constraint.tokens} constrained tokens); the grammar {per_token * 1000:.2f} ms per "
              f"constrained token = {per_token / free * 100:.1f}% of a step")


if __name__ == "__main__":
    main()
