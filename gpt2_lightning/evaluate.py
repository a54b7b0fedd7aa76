"""Scores of ``responses.json`` against the reference outputs: exact match and ROUGE-L."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path

from gpt2_lightning.cli import exit_on_user_error
from gpt2_lightning.io import write_json
from gpt2_lightning.judge import Judge
from gpt2_lightning.records import DataError

_WORD = re.compile(r"\w+", re.UNICODE)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over lower-cased words (1.0: same words in the same order)."""
    pred, ref = _words(prediction), _words(reference)
    if not pred or not ref:
        return float(pred == ref)
    lcs = _lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, reference: str) -> bool:
    """Equal up to case, punctuation and white space."""
    return _words(prediction) == _words(reference)


def score_responses(records: Sequence[dict]) -> dict:
    """Mean exact match and ROUGE-L of ``model_response`` against ``output``."""
    n = len(records)
    if n == 0:
        return {"n": 0, "exact_match": 0.0, "rouge_l": 0.0}
    return {
        "n": n,
        "exact_match": sum(exact_match(r["model_response"], r["output"]) for r in records) / n,
        "rouge_l": sum(rouge_l(r["model_response"], r["output"]) for r in records) / n,
        "empty_responses": sum(not r["model_response"].strip() for r in records),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """gpt2-eval RESPONSES [--out eval.json] [--judge-url URL --judge-model NAME]"""
    parser = argparse.ArgumentParser(prog="gpt2-eval", description="Score a responses.json.")
    parser.add_argument("responses", type=Path, help="responses.json (records with model_response)")
    parser.add_argument("--out", type=Path, help="where to write the scores (default: eval.json beside it)")
    parser.add_argument("--judge-url", help="Ollama (http://localhost:11434) or OpenAI-compatible (.../v1) URL")
    parser.add_argument("--judge-model", default="llama3")
    parser.add_argument("--judge-api", default="auto", choices=["auto", "ollama", "openai"])
    args = parser.parse_args(argv)
    with exit_on_user_error():
        records = _read_responses(args.responses)
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


def _read_responses(path: Path) -> list[dict]:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except ValueError as err:
        raise DataError(f"{path}: not a JSON file ({err})") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON array of records")
    for index, record in enumerate(records):
        for field in ("output", "model_response"):
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise DataError(f"{path}: record {index}: field '{field}' missing or not a string")
    return records


if __name__ == "__main__":
    main()
