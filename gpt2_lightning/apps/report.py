"""Write a run's report.html again: its settings, loss curves, scores and every test record with
the model's answer, sortable and filterable, in one file that opens from disk with no network."""

from __future__ import annotations

import argparse
from pathlib import Path

from gpt2_lightning.errors import DataError
from gpt2_lightning.evaluate.report import write_report
from gpt2_lightning.export.run import Run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="a run directory")


def run(args: argparse.Namespace) -> None:
    if Run.of(args.run) != Run(args.run):
        raise DataError(f"{args.run}: not a run directory (no {Run.CONFIG})")
    print(write_report(args.run))
