"""A multiple-choice benchmark through lm-evaluation-harness, ours (``gpt2 eval --tasks``: our model
object, log-likelihoods on the SFT loss's path) against lm-eval's own ``hf`` model on the Hugging
Face export of the same weights: one process, the same random weights (gpt2-small's shape unless
told), the same local task of HellaSwag's shape (a context of ~60 words, 4 endings of ~20), the
same batch size, float32 on both sides; the wall time of each whole ``simple_evaluate`` (task
building included on both sides) and its documents/s, with the accuracy, which must be equal.

    python bench/lm_eval_speed.py [--model gpt2-small] [--docs 40] [--batch 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lm_eval  # noqa: E402
from common import machine  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from gpt2_lightning.data.prompts import get_style  # noqa: E402
from gpt2_lightning.evaluate.benchmarks import run_benchmarks  # noqa: E402
from gpt2_lightning.export.hf import export_hf  # noqa: E402
from gpt2_lightning.generation.placement import placed_for_generation  # noqa: E402
from gpt2_lightning.model.gpt import GPTConfig, GPTModel  # noqa: E402

WORDS = ("the a man woman dog ball park runs jumps throws catches slowly quickly then after before kitchen "
         "knife bread cuts puts table water glass drinks pours car road drives stops turns left right child "
         "plays laughs sits stands walks into out of with and").split()


def task_folder(folder: Path, docs: int) -> Path:
    folder.mkdir()
    rng = random.Random(0)

    def words(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    data = folder / "docs.jsonl"
    with open(data, "w") as f:
        for _ in range(docs):
            f.write(json.dumps({"ctx": words(60).capitalize(), "endings": [" " + words(20) + "." for _ in range(4)],
                                "label": rng.randrange(4)}) + "\n")
    (folder / "mc_speed.yaml").write_text(textwrap.dedent(f"""\
        task: mc_speed
        dataset_path: json
        dataset_kwargs: {{data_files: {{test: {data}}}}}
        test_split: test
        output_type: multiple_choice
        doc_to_text: "{{{{ctx}}}}"
        doc_to_choice: "{{{{endings}}}}"
        doc_to_target: "{{{{label}}}}"
        metric_list: [{{metric: acc, aggregation: mean, higher_is_better: true}},
                      {{metric: acc_norm, aggregation: mean, higher_is_better: true}}]
        """))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gpt2-small", choices=["gpt2-small", "gpt2-medium"])
    parser.add_argument("--docs", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(machine())
    torch.manual_seed(0)
    cfg = GPTConfig.from_name(args.model)
    model = placed_for_generation(GPTModel(cfg), device="cpu", dtype="float32")
    with tempfile.TemporaryDirectory() as tmp:
        tasks, export = task_folder(Path(tmp) / "tasks", args.docs), Path(tmp) / "hf"
        export.mkdir()
        export_hf(model, get_style("alpaca"), export)

        def ours():
            return run_benchmarks(model, ["mc_speed"], include_path=tasks, batch_size=args.batch)

        def theirs():
            return lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={export},dtype=float32",
                                           tasks=["mc_speed"], batch_size=args.batch, device="cpu",
                                           task_manager=TaskManager(include_path=str(tasks), include_defaults=False))

        times = {"ours": [], "hf": []}
        scores = {}
        for _ in range(args.repeats):
            for side, fn in (("ours", ours), ("hf", theirs)):
                start = time.perf_counter()
                results = fn()
                times[side].append(time.perf_counter() - start)
                scores[side] = results["results"]["mc_speed"]
    print(f"{args.model}, {args.docs} documents x 4 endings, batch {args.batch}, float32, "
          f"median of {args.repeats} whole simple_evaluate calls")
    for side in ("ours", "hf"):
        median = statistics.median(times[side])
        print(f"  {side:5s} {median:7.2f} s  {args.docs / median:6.2f} docs/s  acc {scores[side]['acc,none']:.4f}  "
              f"acc_norm {scores[side]['acc_norm,none']:.4f}  (min {min(times[side]):.2f}, max {max(times[side]):.2f})")
    print(f"  ours / hf speed: {statistics.median(times['hf']) / statistics.median(times['ours']):.2f}x")


if __name__ == "__main__":
    main()
