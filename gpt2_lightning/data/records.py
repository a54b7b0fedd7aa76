"""Instruction records: read a JSON array or JSON Lines file, validate, split.

Every record comes out with the canonical fields ``instruction``, ``input`` (possibly
empty) and ``output``; any other fields of the file are kept as they were.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gpt2_lightning.errors import DataError

Record = dict


@dataclass(frozen=True)
class FieldNames:
    """Which keys of a record hold the instruction, the optional input and the answer."""

    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"
    output_aliases: tuple[str, ...] = ("response",)
    """Accepted in place of ``output`` when that key is absent."""


def load_records(path: str | os.PathLike, fields: FieldNames = FieldNames()) -> list[Record]:
    """Validated records of a ``.json`` (array) or ``.jsonl`` file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl", ""):  # before reading: a Parquet file is not text
        raise DataError(f"{path}: a {suffix} file; records are read from a JSON array (.json) or "
                        f"JSON Lines (.jsonl), one object per record")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty, it holds no records")
    raw = _parse_jsonl(path, text) if suffix == ".jsonl" else _parse_json(path, text)
    if not raw:
        raise DataError(f"{path}: holds no records")
    return [validate_record(item, path, index, fields) for index, item in enumerate(raw)]


def _parse_json(path: Path, text: str) -> list:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    except RecursionError:
        raise DataError(f"{path}: invalid JSON: nested too deeply") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of records (or a .jsonl file), "
                        f"got a JSON {_json_type(data)}")
    return data


def _parse_jsonl(path: Path, text: str) -> list:
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: invalid JSON at line {lineno}, column {err.colno}: {err.msg}") from None
        except RecursionError:
            raise DataError(f"{path}: invalid JSON at line {lineno}: nested too deeply") from None
    return records


def _json_type(value) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def validate_record(item, path: Path | str, index: int, fields: FieldNames = FieldNames()) -> Record:
    """``item`` as a canonical record, or a ``DataError`` naming file, index and field."""
    where = f"{path}: record {index}"
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected an object with '{fields.instruction}' and "
                        f"'{fields.output}', got a JSON {_json_type(item)}")
    output_key = next((k for k in (fields.output, *fields.output_aliases) if k in item), None)
    if fields.instruction not in item:
        raise DataError(f"{where}: missing field '{fields.instruction}'{_mapping_hint(item, fields)}")
    if output_key is None:
        raise DataError(f"{where}: missing field '{fields.output}'{_mapping_hint(item, fields)}")
    values = {}
    for canonical, key, required in (("instruction", fields.instruction, True),
                                     ("input", fields.input, False),
                                     ("output", output_key, True)):
        value = item.get(key)
        if value is None and not required:
            value = ""
        if not isinstance(value, str):
            raise DataError(f"{where}: field '{key}' must be a string, got a JSON {_json_type(value)}")
        if required and not value.strip():
            raise DataError(f"{where}: field '{key}' is empty")
        values[canonical] = value
    extra = {k: v for k, v in item.items() if k not in (fields.instruction, fields.input, output_key)}
    return {**values, **extra}


# Keys other datasets use for the instruction and the answer.
INSTRUCTION_KEYS = ("prompt", "question", "query", "instruction_text", "input_text")
OUTPUT_KEYS = ("completion", "answer", "target", "output_text", "chosen")


def _mapping_hint(item: dict, fields: FieldNames) -> str:
    """The ``data.fields`` settings that would read ``item``, when its keys make them obvious."""
    settings = []
    for name, current, known in (("instruction", fields.instruction, INSTRUCTION_KEYS),
                                 ("output", fields.output, (*fields.output_aliases, *OUTPUT_KEYS))):
        if current not in item:
            key = next((k for k in known if k in item), None)
            if key is None:
                return f" (the record's fields: {', '.join(map(str, item))})"
            settings.append(f"data.fields.{name}={key}")
    return f"; its fields suggest {' '.join(settings)}"


def split_records(records: Sequence[Record], fractions: Sequence[float] = (0.85, 0.05, 0.10),
                  shuffle: bool = False, seed: int = 123) -> tuple[list, list, list]:
    """Train, val and test records.

    Sizes as in the reference: ``train = int(n * f_train)``, ``test = int(n * f_test)``,
    val the rest; the slices are taken in the order train, test, val, so that the 1100
    seed records give the reference's 935 / 55 / 110 and the same test set.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise DataError(f"split fractions (train, val, test) must be 3 non-negative numbers summing "
                        f"to 1, got {list(fractions)}")
    order = list(records)
    if shuffle:
        random.Random(seed).shuffle(order)
    n = len(order)
    n_train, n_test = int(n * fractions[0]), int(n * fractions[2])
    train, test, val = order[:n_train], order[n_train:n_train + n_test], order[n_train + n_test:]
    for name, part, fraction in (("train", train, fractions[0]), ("val", val, fractions[1]),
                                 ("test", test, fractions[2])):
        if fraction > 0 and not part:
            raise DataError(f"the {name} split is empty: {n} records x {fraction} rounds to 0; "
                            f"use more records or a larger fraction")
    return train, val, test
