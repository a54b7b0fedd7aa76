"""Answer instructions with a model and save them as JSON (resumes an interrupted file).

Without --records, MODEL must be a run directory: its test split is answered into
<run>/responses.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gpt2_lightning.apps.inference import add_batch_arguments, answer_into
from gpt2_lightning.export.run import Run
from gpt2_lightning.generation.respond import read_instructions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_batch_arguments(parser)
    parser.add_argument("--records", type=Path, help="JSON/JSONL records, or a text file with one instruction "
                        "per line")
    parser.add_argument("--out", type=Path, help="output JSON (default: <run>/responses.json, or "
                        "<records>-responses.json)")


def run(args: argparse.Namespace) -> None:
    if args.records is None:
        run = Run(args.model)
        records = run.test_records()
        out = args.out or run.responses
    else:
        records = read_instructions(args.records)
        out = args.out or args.records.with_name(f"{args.records.stem}-responses.json")
    answered = answer_into(args, records, out)
    print(f"{len(answered)} responses in {out}")
