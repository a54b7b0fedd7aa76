"""Instruction records and conversations: read a JSON array or JSON Lines file, validate, split.

A file holds one format, told by its first record or by ``fmt``: Alpaca records
(``instruction``, ``input``, ``output``), OpenAI ``messages`` (``role`` system / user /
assistant, ``content``) or ShareGPT ``conversations`` (``from`` system / human / gpt,
``value``). Alpaca records come out with the canonical fields ``instruction``, ``input``
(possibly empty) and ``output``; conversations as ``messages`` in the OpenAI form. Any other
fields of the file are kept as they were.

A file whose first record has a ``chosen`` and a ``rejected`` answer holds preferences
(``gpt2_lightning.data.preference``): an Alpaca record or a conversation up to the user's
last turn, and the two answers to it.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gpt2_lightning.errors import DataError
from gpt2_lightning.fetch import unreachable_hub

Record = dict


@dataclass(frozen=True)
class FieldNames:
    """Which keys of a record hold the instruction, the optional input and the answer."""

    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"
    output_aliases: tuple[str, ...] = ("response",)
    """Accepted in place of ``output`` when that key is absent."""
    chosen: str = "chosen"
    """Preference data: the preferred answer."""
    rejected: str = "rejected"
    """Preference data: the answer not preferred."""


FORMATS = ("auto", "alpaca", "messages", "sharegpt", "preference")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
HUB_PREFIX = "hf://"
TABLE_SUFFIXES = {".csv": "csv", ".parquet": "parquet"}


def load_records(path: str | os.PathLike, fields: FieldNames = FieldNames(), fmt: str = "auto",
                 hf_split: str = "train", hf_subset: str | None = None) -> list[Record]:
    """Validated records in the format ``fmt`` (``auto``: told by the first record) of a
    ``.json`` (array) or ``.jsonl`` file; through the ``datasets`` library, of a ``.csv`` or
    ``.parquet`` file, a folder that ``Dataset.save_to_disk`` wrote, or ``hf://NAME`` on the
    Hugging Face hub (its ``hf_split``, and ``hf_subset`` where it has several)."""
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}; choose one of {', '.join(FORMATS)}")
    raw, source = read_raw(path, hf_split, hf_subset)
    return validate_all(raw, source, fields, fmt)


def read_raw(path: str | os.PathLike, hf_split: str = "train", hf_subset: str | None = None) -> tuple[list, Path | str]:
    """The unvalidated items of a file of records (see ``load_records``), and the name to give in errors."""
    spec = os.fspath(path)
    if spec.startswith(HUB_PREFIX) or Path(spec).suffix.lower() in TABLE_SUFFIXES or Path(spec).is_dir():
        return read_with_datasets(spec, hf_split, hf_subset), spec
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl", ""):  # before reading: a binary file is not text
        raise DataError(f"{path}: a {suffix} file; records are read from a JSON array (.json), JSON Lines "
                        f"(.jsonl), CSV (.csv), Parquet (.parquet), a saved Hugging Face dataset folder or hf://NAME")
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
    return (_parse_jsonl(path, text) if suffix == ".jsonl" else _parse_json(path, text)), path


def validate_all(raw: list, path: Path | str, fields: FieldNames, fmt: str) -> list[Record]:
    if not raw:
        raise DataError(f"{path}: holds no records")
    if fmt == "auto":
        fmt = record_format(raw[0], fields)
    if fmt == "preference":
        from gpt2_lightning.data.preference import validate_preference

        return [validate_preference(item, path, number, fields) for number, item in enumerate(raw, start=1)]
    if fmt == "alpaca":
        return [validate_record(item, path, number, fields) for number, item in enumerate(raw, start=1)]
    return [validate_conversation(item, path, number, fmt) for number, item in enumerate(raw, start=1)]


def check_hub_reachable(spec: str, timeout: float = 5.0) -> None:
    """Stop at once, not after the hub client's minute of retries, when the hub cannot be
    reached; ``HF_HUB_OFFLINE=1`` reads the local Hugging Face cache instead."""
    unreachable = unreachable_hub(timeout)
    if unreachable is not None:
        host, err = unreachable
        raise DataError(f"{spec}: the Hugging Face hub ({host}) cannot be reached ({err.strerror or err}); "
                        f"with no network, give data.path a local file, or set HF_HUB_OFFLINE=1 to read the "
                        f"dataset from the Hugging Face cache")


def read_with_datasets(spec: str, split: str, subset: str | None) -> list[dict]:
    """The rows of a CSV / Parquet file, a saved dataset folder or a hub dataset, as dicts."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"{spec}: reading it needs the datasets package: pip install 'gpt2-lightning[datasets]'") from None
    datasets.disable_progress_bars()
    try:
        if spec.startswith(HUB_PREFIX):
            check_hub_reachable(spec)
            table = datasets.load_dataset(spec.removeprefix(HUB_PREFIX), subset, split=split)
        elif Path(spec).is_dir():
            table = datasets.load_from_disk(spec)
            if isinstance(table, datasets.DatasetDict):
                if split not in table:
                    raise DataError(f"{spec}: no split {split!r}; it has {', '.join(table)} (data.hf_split)")
                table = table[split]
        else:
            if not Path(spec).is_file():
                raise DataError(f"{spec}: no such file")
            table = datasets.load_dataset(TABLE_SUFFIXES[Path(spec).suffix.lower()], data_files=spec, split="train")
    except DataError:
        raise
    except Exception as err:  # the hub unreachable, a name that does not exist, an unreadable file
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        hint = "; offline, save the dataset where there is network and give data.path the file" \
            if spec.startswith(HUB_PREFIX) else ""
        raise DataError(f"{spec}: cannot read it ({first}){hint}") from None
    return table.to_list()


def reference_answer(record: Record) -> str:
    """The answer a record expects: a preference's chosen answer, an Alpaca record's output, a
    conversation's last answer."""
    if "chosen" in record:
        return record["chosen"]
    return record["messages"][-1]["content"] if "messages" in record else record["output"]


def prompt_of(record: Record, style) -> str:
    """What the model is asked to answer, as prompt text of ``style``: an Alpaca record's
    prompt, a conversation up to its last answer (a preference's conversation ends before it)."""
    if "messages" not in record:
        return style.prompt(record)
    return style.render(record["messages"] if "chosen" in record else record["messages"][:-1])


def answered(record: Record) -> Record:
    """``record`` as a training example: a preference becomes the record of its chosen answer."""
    if "chosen" not in record:
        return record
    rest = {k: v for k, v in record.items() if k not in ("chosen", "rejected")}
    if "messages" in record:
        return {**rest, "messages": [*record["messages"], {"role": "assistant", "content": record["chosen"]}]}
    return {**rest, "output": record["chosen"]}


def record_format(item, fields: FieldNames = FieldNames()) -> str:
    """The format a record is in: ``preference``, ``messages``, ``sharegpt`` or ``alpaca``."""
    if isinstance(item, dict) and fields.chosen in item and fields.rejected in item:
        return "preference"
    if isinstance(item, dict) and "messages" in item:
        return "messages"
    if isinstance(item, dict) and "conversations" in item:
        return "sharegpt"
    return "alpaca"


def validate_conversation(item, path: Path | str, number: int, fmt: str, key: str | None = None,
                          answered: bool = True) -> Record:
    """A ``messages`` or ``sharegpt`` record as ``{"messages": [...], **other fields}``, or a
    ``DataError`` naming the file, the record, the turn and the field. ``key``: the field that
    holds the turns (default: the format's own); ``answered``: whether the conversation ends
    with an answer (training data) or with the user's turn (a prompt)."""
    where = f"{path}: record {number}"
    role_key, content_key = ("role", "content") if fmt == "messages" else ("from", "value")
    key = key or ("messages" if fmt == "messages" else "conversations")
    if not isinstance(item, dict) or key not in item:
        got = f"fields {', '.join(map(str, item))}" if isinstance(item, dict) else f"a JSON {json_type(item)}"
        raise DataError(f"{where}: expected an object with '{key}' (a {fmt} file), got {got}")
    turns = item[key]
    if not isinstance(turns, list):
        raise DataError(f"{where}: field '{key}' must be a list of turns, got a JSON {json_type(turns)}")
    messages = []
    for turn_number, turn in enumerate(turns, start=1):
        at = f"{where}, turn {turn_number}"
        if not isinstance(turn, dict):
            raise DataError(f"{at}: expected an object with '{role_key}' and '{content_key}', "
                            f"got a JSON {json_type(turn)}")
        for field_name in (role_key, content_key):
            if field_name not in turn:
                raise DataError(f"{at}: missing field '{field_name}'")
            if not isinstance(turn[field_name], str):
                raise DataError(f"{at}: field '{field_name}' must be a string, got a JSON {json_type(turn[field_name])}")
        roles = SHAREGPT_ROLES if fmt == "sharegpt" else {r: r for r in ("system", "user", "assistant")}
        if turn[role_key] not in roles:
            raise DataError(f"{at}: field '{role_key}' is {turn[role_key]!r}; use one of {', '.join(roles)}")
        messages.append({"role": roles[turn[role_key]], "content": turn[content_key]})
    check_messages(messages, where, role_key, content_key, answered)
    return {"messages": messages, **{k: v for k, v in item.items() if k != key}}


def chat_prompt(messages: Sequence[Mapping[str, str]], style, empty_answers: bool = False) -> str:
    """The prompt text of a conversation that ends with the user's turn (a chat request) in
    ``style``: developer messages count as system ones, tool messages are left out; a
    ``DataError`` names the turn that does not fit. ``empty_answers``: an earlier answer may be
    empty (a model can give one)."""
    conversation = [{"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]}
                    for m in messages if m["role"] in ("system", "developer", "user", "assistant")]
    check_messages(conversation, "messages", answered=False, empty_answers=empty_answers)
    return style.render(conversation)


def check_messages(messages: Sequence[dict], where: str, role_key: str = "role", content_key: str = "content",
                   answered: bool = True, empty_answers: bool = False) -> None:
    """A conversation is system messages first, then user and assistant turns in turn,
    starting with the user, no turn empty (but answers, with ``empty_answers``); ``answered``:
    it ends with an answer (training data), else with the user's turn (a prompt)."""
    if not messages:
        raise DataError(f"{where}: the conversation is empty")
    expected = "user"
    for index, message in enumerate(messages):
        at = f"{where}, turn {index + 1}"  # counted from 1, as records are
        role = message["role"]
        if not message["content"].strip() and not (empty_answers and role == "assistant"):
            raise DataError(f"{at}: field '{content_key}' is empty")
        if role == "system":
            if index and messages[index - 1]["role"] != "system":
                raise DataError(f"{at}: a system message must come before the conversation's turns")
            continue
        if role != expected:
            what = "an assistant turn must follow a user turn" if role == "assistant" else \
                "a user turn must follow the answer to the previous one"
            raise DataError(f"{at}: {what} (field '{role_key}')")
        expected = "assistant" if role == "user" else "user"
    last = "assistant" if answered else "user"
    if messages[-1]["role"] != last:
        raise DataError(f"{where}: the conversation must end with {'an assistant' if answered else 'a user'} turn")


def _parse_json(path: Path, text: str) -> list:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    except RecursionError:
        raise DataError(f"{path}: invalid JSON: nested too deeply") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of records (or a .jsonl file), "
                        f"got a JSON {json_type(data)}")
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


def json_type(value) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def validate_record(item, path: Path | str, number: int, fields: FieldNames = FieldNames()) -> Record:
    """``item`` as a canonical record, or a ``DataError`` naming file, record (``number``,
    counted from 1 as editors count lines) and field."""
    where = f"{path}: record {number}"
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected an object with '{fields.instruction}' and "
                        f"'{fields.output}', got a JSON {json_type(item)}")
    return validate_alpaca(item, where, fields)


def validate_alpaca(item: dict, where: str, fields: FieldNames, with_output: bool = True) -> Record:
    """The canonical fields of an Alpaca-shaped object (``instruction``, ``input``, and with
    ``with_output`` ``output``), its other fields kept; a ``DataError`` names the field."""
    output_key = next((k for k in (fields.output, *fields.output_aliases) if k in item), None)
    if fields.instruction not in item:
        raise DataError(f"{where}: missing field '{fields.instruction}'{_mapping_hint(item, fields)}")
    if output_key is None and with_output:
        raise DataError(f"{where}: missing field '{fields.output}'{_mapping_hint(item, fields)}")
    values = {}
    checked = (("instruction", fields.instruction, True), ("input", fields.input, False),
               *((("output", output_key, True),) if with_output else ()))
    for canonical, key, required in checked:
        value = item.get(key)
        if value is None and not required:
            value = ""
        if not isinstance(value, str):
            raise DataError(f"{where}: field '{key}' must be a string, got a JSON {json_type(value)}")
        if required and not value.strip():
            raise DataError(f"{where}: field '{key}' is empty")
        values[canonical] = value
    extra = {k: v for k, v in item.items() if k not in {key for _, key, _ in checked}}
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
                            f"use more records or a larger fraction (data.split=[train, val, test], now "
                            f"{list(fractions)})")
    return train, val, test
