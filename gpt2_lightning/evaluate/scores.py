"""Scores of ``responses.json`` against the reference outputs: exact match and ROUGE-L."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from gpt2_lightning.data.records import reference_answer
from gpt2_lightning.errors import DataError
from gpt2_lightning.io import read_json

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
    """Mean exact match and ROUGE-L of ``model_response`` against the reference answer
    (``output``; a conversation's last answer)."""
    n = len(records)
    if n == 0:
        return {"n": 0, "exact_match": 0.0, "rouge_l": 0.0}
    return {
        "n": n,
        "exact_match": sum(exact_match(r["model_response"], reference_answer(r)) for r in records) / n,
        "rouge_l": sum(rouge_l(r["model_response"], reference_answer(r)) for r in records) / n,
        "empty_responses": sum(not r["model_response"].strip() for r in records),
    }


def read_responses(path: Path) -> list[dict]:
    try:
        records = read_json(path)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except ValueError as err:
        raise DataError(f"{path}: not a JSON file ({err})") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON array of records")
    for number, record in enumerate(records, start=1):
        answer = "chosen" if isinstance(record, dict) and "chosen" in record else "output"
        for field in ("messages" if isinstance(record, dict) and "messages" in record and answer == "output" else answer,
                      "model_response"):
            if not isinstance(record, dict) or not isinstance(record.get(field), str if field != "messages" else list):
                raise DataError(f"{path}: record {number}: field '{field}' missing or not a string")
    return records

