"""Make preference data from SFT data: a run answers its training split, and each record becomes a
preference with the reference answer chosen and the model's own answer rejected.

Records where the two agree (or the model answers nothing) are left out. The result trains with
python train.py experiment=dpo model.weights=RUN data.path=OUT: the model learns to prefer the
answers it was taught to the ones it gives.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gpt2_lightning.apps.inference import add_batch_arguments, answer_into
from gpt2_lightning.data.records import Record, load_records, reference_answer
from gpt2_lightning.errors import ConfigError
from gpt2_lightning.export.run import Run
from gpt2_lightning.io import write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_batch_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="the preference file to write (JSON)")
    parser.add_argument("--records", type=Path, help="SFT records to answer instead of the run's training split")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")


def preference_of(record: Record) -> Record | None:
    """``record`` answered (``model_response``) as a preference: its reference answer chosen, the
    model's rejected; None where they agree or the model gave no answer."""
    chosen, rejected = reference_answer(record).strip(), record["model_response"].strip()
    if not rejected or rejected == chosen:
        return None
    rest = {k: v for k, v in record.items() if k not in ("output", "model_response", "chosen", "rejected")}
    if "messages" in record and "chosen" not in record:
        rest["messages"] = record["messages"][:-1]
    return {**rest, "chosen": reference_answer(record), "rejected": record["model_response"]}


def run(args: argparse.Namespace) -> None:
    if args.out.exists() and not args.force:
        raise ConfigError(f"{args.out} exists; give another --out, or --force to replace it")
    records = load_records(args.records) if args.records else Run(args.model).split_records("train")
    answers = args.out.with_name(f"{args.out.stem}-answers.json")
    answered = answer_into(args, records, answers)
    preferences = [p for p in map(preference_of, answered) if p is not None]
    write_json(args.out, preferences)
    print(f"{len(preferences)} preferences in {args.out} ({len(answered) - len(preferences)} of {len(answered)} "
          f"records left out: the model's answer was the reference's, or empty); the answers are in {answers}")
