"""Score a responses.json: exact match and ROUGE-L against the reference outputs, and
optionally an LLM judge. The scores are merged into eval.json beside it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gpt2_lightning.errors import DataError
from gpt2_lightning.evaluate.judge import Judge
from gpt2_lightning.evaluate.report import write_report
from gpt2_lightning.evaluate.scores import read_responses, score_responses
from gpt2_lightning.export.run import Run
from gpt2_lightning.fetch import sha256_of
from gpt2_lightning.io import read_json, write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("responses", type=Path, help="responses.json (records with model_response), or a run "
                        "directory (its responses.json)")
    parser.add_argument("--out", type=Path, help="where to write the scores (default: eval.json beside it)")
    parser.add_argument("--judge-url", help="an LLM judge: Ollama (http://localhost:11434) or an "
                        "OpenAI-compatible server (.../v1)")
    parser.add_argument("--judge-model", default="llama3", help="the judge's model name (default: %(default)s)")
    parser.add_argument("--judge-api", default="auto", choices=["auto", "ollama", "openai"],
                        help="auto: openai when the URL ends in /v1, else ollama (default: %(default)s)")


def run(args: argparse.Namespace) -> None:
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


def read_scores(path: Path) -> dict:
    """The scores already in ``path`` (none when it does not exist)."""
    try:
        scores = read_json(path, missing={})
    except ValueError as err:
        raise DataError(f"{path}: not a JSON file ({err}); move it away or give --out") from None
    if not isinstance(scores, dict):
        raise DataError(f"{path}: expected a JSON object of scores; move it away or give --out")
    return scores
