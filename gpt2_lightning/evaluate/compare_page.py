"""``compare.html``: runs side by side on one page that opens from disk with no network: the ranked
table of ``gpt2 compare``, every run's loss curves overlaid, and each test record with every run's
answer beside the expected one, sortable and filterable."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from pathlib import Path

from gpt2_lightning.data.records import reference_answer
from gpt2_lightning.errors import DataError
from gpt2_lightning.evaluate.plot import plt, read_scalars
from gpt2_lightning.evaluate.report import TABLE_SCRIPT, asked, cell
from gpt2_lightning.export.run import Run
from gpt2_lightning.io import atomic_write, read_json

GENERATOR = '<meta name="generator" content="gpt2-lightning compare">'


def shared_overrides(rows: list[dict]) -> set[str]:
    """The overrides every one of the runs' ``rows`` was given."""
    return set.intersection(*(set(r["overrides"]) for r in rows)) if rows else set()


def write_compare_page(path: Path, rows: list[dict], columns: dict[str, Callable[[dict], object]]) -> Path:
    """Write the page of the ranked ``rows`` (``gpt2 compare``'s, each with its ``run``) to ``path``;
    ``columns``: each score's heading and how a row gives it. A file there that this function did
    not write is never replaced."""
    if path.is_file() and GENERATOR not in path.read_text(encoding="utf-8", errors="replace")[:2000]:
        raise DataError(f"{path} exists and is not a page gpt2 compare wrote; give --html another path")
    runs = [Run(row["run"]) for row in rows]
    names = [f"#{rank} {row['name']}" for rank, row in enumerate(rows, start=1)]
    e = html.escape
    shared = shared_overrides(rows)
    ranking_head = "".join(f"<th>{e(h)}</th>" for h in ["#", "run", "overrides", *columns])
    ranking = "".join(
        f"<tr><td>{rank}</td><td>{e(row['run'])}</td><td>{e(' '.join(o for o in row['overrides'] if o not in shared))}"
        f"</td>{''.join(cell(value(row)) for value in columns.values())}</tr>" for rank, row in enumerate(rows, start=1))
    answers = _answers(runs)
    head = "".join(f'<th data-numeric="{int(i == 0)}">{e(h)}</th>'
                   for i, h in enumerate(["#", "asked", "expected", *names]))
    body = "".join("<tr>" + cell(i + 1) + cell(question) + cell(record["expected"]) +
                   "".join(cell(record["answers"].get(n)) for n in range(len(runs))) + "</tr>"
                   for i, (question, record) in enumerate(answers.items()))
    page = PAGE.format(generator=GENERATOR, count=len(rows), shared=e(" ".join(sorted(shared)) or "(none)"),
                       ranking_head=ranking_head, ranking=ranking, curves=_curves(runs, names), head=head, body=body,
                       records=len(answers), table_script=TABLE_SCRIPT)
    with atomic_write(path) as f:
        f.write(page)
    return path


def _answers(runs: list[Run]) -> dict[str, dict]:
    """Every test record any run answered, by what it asks: the expected answer and each run's."""
    records: dict[str, dict] = {}
    for index, run in enumerate(runs):
        answered = read_json(run.responses, missing=[], invalid=[])
        for record in answered if isinstance(answered, list) else []:
            if not isinstance(record, dict):
                continue
            entry = records.setdefault(asked(record), {"expected": reference_answer(record), "answers": {}})
            entry["answers"][index] = record.get("model_response", "")
    return records


def _curves(runs: list[Run], names: list[str]) -> str:
    """Every run's train and val loss against steps, overlaid, as an image the page carries."""
    figure, (train, val) = plt.subplots(1, 2, figsize=(11, 4), dpi=110, sharey=True)
    drawn = False
    for run, name in zip(runs, names):
        scalars = read_scalars(run.tensorboard) if run.tensorboard.is_dir() else {}
        for ax, tag in ((train, "train_loss"), (val, "val_loss")):
            if tag in scalars:
                steps, values = zip(*scalars[tag])
                ax.plot(steps, values, label=name, marker="o" if len(steps) < 30 else None, markersize=3)
                drawn = True
    if not drawn:
        plt.close(figure)
        return "<p>No loss curves: no run logged a loss.</p>"
    for ax, title in ((train, "Training loss"), (val, "Validation loss")):
        ax.set_title(title)
        ax.set_xlabel("Step")
        ax.grid(alpha=0.3)
    train.set_ylabel("Loss")
    val.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return f'<img alt="loss curves" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">{generator}<title>{count} runs compared: gpt2-lightning</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; }} th, td {{ border: 1px solid #ccc; padding: 4px 8px; vertical-align: top;
text-align: left; white-space: pre-wrap; }} #records th {{ cursor: pointer; background: #f3f3f3; }}
#records td {{ max-width: 24em; }} img {{ max-width: 100%; }} .bar {{ margin: 0.8em 0; }}
</style></head><body>
<h1>{count} runs compared</h1>
<p>Every run: <code>{shared}</code></p>
<h2>Ranking</h2><table id="ranking"><thead><tr>{ranking_head}</tr></thead><tbody>{ranking}</tbody></table>
<h2>Loss</h2>{curves}
<h2>Test records (<span id="shown">{records}</span> of {records})</h2>
<div class="bar"><input id="filter" type="search" placeholder="filter: words in any column" size="40">
(click a column heading to sort by it)</div>
<table id="records"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<script>
{table_script}</script></body></html>
"""
