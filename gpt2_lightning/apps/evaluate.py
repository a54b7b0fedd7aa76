"""Score a responses.json: exact match and ROUGE-L against the reference outputs, and
optionally an LLM judge. The scores are merged into eval.json beside it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gpt2_lightning.evaluate.judge import Judge
from gpt2_lightning.evaluate.scores import read_responses, score_responses
from gpt2_lightning.io import write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("responses", type=Path, help="responses.json (records with model_response)")
    parser.add_argument("--out", type=Path, help="where to write the scores (default: eval.json beside it)")
    parser.add_argument("--judge-url", help="an LLM judge: Ollama (http://localhost:11434) or an "
                        "OpenAI-compatible server (.../v1)")
    parser.add_argument("--judge-model", default="llama3", help="the judge's model name (default: %(default)s)")
    parser.add_argument("--judge-api", default="auto", choices=["auto", "ollama", "openai"],
                        help="auto: openai when the URL ends in /v1, else ollama (default: %(default)s)")


def run(args: argparse.Namespace) -> None:
    records = read_responses(args.responses)
    scores = score_responses(records)
    out = args.out or args.responses.with_name("eval.json")
    if out.is_file():  # keep what training wrote (test loss ...), update the rest
        scores = {**json.loads(out.read_text()), **scores}
    if args.judge_url:
        judged = Judge(args.judge_url, args.judge_model, args.judge_api).score(records)
        valid = [s for s in judged if s is not None]
        scores["judge"] = {"model": args.judge_model, "scores": judged,
                           "mean": sum(valid) / len(valid) if valid else None}
    write_json(out, scores)
    print(json.dumps({k: v for k, v in scores.items() if k != "judge"}, indent=2))
    if "judge" in scores:
        print(f"judge ({args.judge_model}) mean score: {scores['judge']['mean']}")
