"""Score a responses.json: exact match and ROUGE-L against the reference outputs, and
optionally an LLM judge. The scores are merged into eval.json beside it.

With --tasks, run lm-evaluation-harness benchmarks on a model instead (a run, an export, a
checkpoint or GPT-2 weights: anything gpt2 chat takes) and merge lm-eval's results into the
run's benchmarks.json (else --out): gpt2 eval runs/quickstart --tasks hellaswag --limit 100.
Task files of your own work offline: --include-path DIR."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gpt2_lightning.errors import ConfigError, DataError
from gpt2_lightning.evaluate.judge import Judge
from gpt2_lightning.evaluate.report import write_report
from gpt2_lightning.evaluate.scores import read_responses, score_responses
from gpt2_lightning.export.run import Run
from gpt2_lightning.fetch import sha256_of
from gpt2_lightning.io import read_json, write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("responses", type=Path, help="responses.json (records with model_response), or a run "
                        "directory (its responses.json); with --tasks, the model to benchmark")
    parser.add_argument("--out", type=Path, help="where to write the scores (default: eval.json beside it; with "
                        "--tasks, the run's benchmarks.json, else benchmarks.json here)")
    parser.add_argument("--judge-url", help="an LLM judge: Ollama (http://localhost:11434) or an "
                        "OpenAI-compatible server (.../v1)")
    parser.add_argument("--judge-model", default="llama3", help="the judge's model name (default: %(default)s)")
    parser.add_argument("--judge-api", default="auto", choices=["auto", "ollama", "openai"],
                        help="auto: openai when the URL ends in /v1, else ollama (default: %(default)s)")
    bench = parser.add_argument_group("benchmarks (lm-evaluation-harness: pip install 'gpt2-lightning[eval]')")
    bench.add_argument("--tasks", type=lambda s: [t for t in s.split(",") if t],
                       help="comma-separated lm-eval tasks or groups (hellaswag,arc_easy) or task YAML files")
    bench.add_argument("--include-path", type=Path, help="a folder of task YAML files of your own")
    bench.add_argument("--num-fewshot", type=int, help="examples before each question (default: the task's)")
    bench.add_argument("--limit", type=float, help="at most this many documents per task (below 1: a fraction)")
    bench.add_argument("--batch-size", type=int, default=8, help="sequences scored together (default: %(default)s)")
    bench.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default: %(default)s)")
    bench.add_argument("--dtype", default="float32", help="the weights' dtype: float32 (the published scores' "
                       "precision), bfloat16, float16 or auto (default: %(default)s)")


def run(args: argparse.Namespace) -> None:
    if args.tasks:
        return run_tasks(args)
    if args.responses.is_dir():
        args.responses = Run(args.responses).responses
    records = read_responses(args.responses)
    responses_sha256 = sha256_of(args.responses)
    out = args.out or args.responses.with_name("eval.json")
    previous = read_scores(out)  # what training wrote (test loss ...) stays
    judge = previous.pop("judge", None)
    if not isinstance(judge, dict) or judge.get("responses_sha256") != responses_sha256:
        judge = None  # it judged other responses
    if args.judge_url:
        judged = Judge(args.judge_url, args.judge_model, args.judge_api).score(records)
        valid = [s for s in judged if s is not None]
        judge = {"model": args.judge_model, "scores": judged, "mean": sum(valid) / len(valid) if valid else None,
                 "responses_sha256": responses_sha256}
    scores = {**previous, **score_responses(records), **({"judge": judge} if judge else {})}
    write_json(out, scores)
    print(json.dumps({k: v for k, v in scores.items() if k != "judge"}, indent=2))
    if judge:
        print(f"judge ({judge['model']}) mean score: {judge['mean']}")
    run = Run.of(args.responses)
    if run is not None and out == run.scores and run.report.is_file():
        write_report(run.path)  # the report shows these scores, not the ones before


def run_tasks(args: argparse.Namespace) -> None:
    from gpt2_lightning.evaluate.benchmarks import results_table, run_benchmarks, save_benchmarks
    from gpt2_lightning.export.load import load_model
    from gpt2_lightning.generation.placement import placed_for_generation

    spec = str(args.responses)
    run = Run.of(spec)
    out = args.out or (run.benchmarks if run is not None else Path("benchmarks.json"))
    if args.include_path is not None and not args.include_path.is_dir():
        raise ConfigError(f"--include-path {args.include_path}: not a folder")
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    model, _ = load_model(spec)
    model = placed_for_generation(model, device=args.device, dtype=args.dtype)
    results = run_benchmarks(model, args.tasks, args.include_path, args.num_fewshot, limit, args.batch_size)
    save_benchmarks(out, results, model_name=run.name if run is not None else spec)
    print(results_table(results))
    print(f"results: {out}")
    if run is not None and out == run.benchmarks and run.report.is_file():
        write_report(run.path)


def read_scores(path: Path) -> dict:
    """The scores already in ``path`` (none when it does not exist)."""
    try:
        scores = read_json(path, missing={})
    except ValueError as err:
        raise DataError(f"{path}: not a JSON file ({err}); move it away or give --out") from None
    if not isinstance(scores, dict):
        raise DataError(f"{path}: expected a JSON object of scores; move it away or give --out")
    return scores
