"""Compare runs: one row per run, ranked, with what was set differently in each and how it scored.

Each RUN is a run directory or a folder of runs: a sweep's (python train.py -m ...:
multirun/<date>/<time>/) stands for every run inside it. The columns: the overrides that differ
between the runs (those all share are said once, above the table), the best val loss, the test
loss, ROUGE-L and exact match of the answers, the judge's mean score, the time spent in
training steps, and each benchmark score (gpt2 eval --tasks). The same, with every run's loss
curves overlaid and the test records answered side by side, goes into compare.html (--html).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

from gpt2_lightning.apps.progress import Progress
from gpt2_lightning.errors import DataError
from gpt2_lightning.evaluate.compare_page import shared_overrides, write_compare_page
from gpt2_lightning.export.run import Run

# column -> (heading, which way is better); the first is the default ranking
COLUMNS = {"best_val_loss": ("best val loss", min), "test_loss": ("test loss", min), "rouge_l": ("ROUGE-L", max),
           "exact_match": ("exact match", max), "judge": ("judge", max), "train_seconds": ("train s", min)}
SEARCH_DEPTH = 3  # multirun/<date>/<time>/<job>


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", type=Path, help="run directories, or folders holding runs (a sweep's)")
    parser.add_argument("--sort", default="best_val_loss", choices=list(COLUMNS), help="rank by this column "
                        "(default: %(default)s; losses and time lowest first, scores highest first)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    parser.add_argument("--html", type=Path, help="where to write the page (default: compare.html in the folder "
                        "that holds all the runs, a sweep's own)")


def find_runs(path: Path, depth: int = SEARCH_DEPTH) -> list[Run]:
    """The runs ``path`` is or holds (searched ``depth`` folders down), in the order of their folders' names."""
    if (path / Run.CONFIG).is_file():
        return [Run(path)]
    if depth == 0 or not path.is_dir():
        return []
    return [run for child in sorted(path.iterdir(), key=_natural) if child.is_dir()
            for run in find_runs(child, depth - 1)]


def _natural(path: Path) -> tuple:
    """Job folders 0, 1, ..., 10 in number order."""
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def row(run: Run) -> dict:
    """What ``run`` was set to (its overrides) and how it did."""
    scores = run.read_scores()
    trained = Progress.read(run).trained or {}
    judge = scores.get("judge")
    return {"run": str(run.path), "name": run.name, "overrides": run.overrides(),
            "best_val_loss": scores.get("best_val_loss", trained.get("best_score")),
            "test_loss": scores.get("test_loss"), "rouge_l": scores.get("rouge_l"),
            "exact_match": scores.get("exact_match"), "judge": judge.get("mean") if isinstance(judge, dict) else None,
            "train_seconds": trained.get("seconds"), "benchmarks": run.benchmark_scores()}


def ranked(rows: list[dict], column: str) -> list[dict]:
    """``rows`` best first by ``column``; rows without it last, in their order."""
    better = COLUMNS[column][1]
    scored = [r for r in rows if isinstance(r[column], (int, float))]
    scored.sort(key=lambda r: r[column], reverse=better is max)
    return scored + [r for r in rows if r not in scored]


def columns(rows: list[dict]) -> dict[str, Callable[[dict], object]]:
    """Each column's heading and how a row gives its value: the scores, then every benchmark score
    any of the runs has."""
    found = {heading: (lambda r, column=column: r[column]) for column, (heading, _) in COLUMNS.items()}
    for name in sorted({name for r in rows for name in r["benchmarks"]}):
        found[name] = lambda r, name=name: r["benchmarks"].get(name)
    return found


def table(rows: list[dict]) -> str:
    """The rows as text: the overrides all runs share once, then one ranked line per run."""
    shared = shared_overrides(rows)
    shown = columns(rows)
    header = ["#", "run", "overrides", *shown]
    lines = [[str(rank), r["run"], " ".join(o for o in r["overrides"] if o not in shared) or "-",
              *(_number(value(r)) for value in shown.values())] for rank, r in enumerate(rows, start=1)]
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
    text = [f"all runs: {' '.join(o for o in rows[0]['overrides'] if o in shared)}"] if shared else []
    text += ["  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip() for cells in [header, *lines]]
    return "\n".join(text)


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def run(args: argparse.Namespace) -> None:
    runs = []
    for path in args.runs:
        found = find_runs(path)
        if not found:
            raise DataError(f"{path}: holds no runs (no {Run.CONFIG} in it or in its folders)")
        runs += [r for r in found if r not in runs]
    rows = ranked([row(r) for r in runs], args.sort)
    print(json.dumps(rows, indent=2) if args.json else table(rows))
    page = args.html or Path(os.path.commonpath([r.path.resolve() for r in runs])) / "compare.html"
    write_compare_page(page, rows, columns(rows))
    if not args.json:
        print(f"page: {page}")
