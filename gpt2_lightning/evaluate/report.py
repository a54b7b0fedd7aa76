"""``report.html``: a run on one page that opens from disk with no network: its settings, its loss
curves, every score, and every test record beside the model's answer, sortable and filterable.

A run tuned from another run's weights (DPO after SFT) shows that run's answers beside its own.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path

from gpt2_lightning.data.records import reference_answer
from gpt2_lightning.evaluate.plot import loss_figure, plt, read_scalars
from gpt2_lightning.evaluate.scores import rouge_l
from gpt2_lightning.export.card import RunSummary
from gpt2_lightning.export.run import Run
from gpt2_lightning.io import atomic_write, read_json

SETTINGS = ("model.name", "model.weights", "adapter.name", "data.path", "data.url", "data.prompt_style",
            "data.batch_size", "optimizer.lr", "optimizer.weight_decay", "optimizer.schedule", "trainer.max_epochs",
            "trainer.max_steps", "dpo")


def asked(record: dict) -> str:
    """What the record asks: an instruction and its input, or a conversation's turns before the answer."""
    if "messages" in record:
        turns = record["messages"] if "chosen" in record else record["messages"][:-1]
        return "\n".join(f"{m['role']}: {m['content']}" for m in turns)
    return record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")


def write_report(run_dir: str | os.PathLike) -> Path:
    """Write the run's ``report.html`` from what it holds; return its path."""
    run = Run(run_dir)
    records = read_json(run.responses, missing=[], invalid=[])
    scores = run.read_scores()
    judge = scores.get("judge") if isinstance(scores.get("judge"), dict) else {}
    judged = judge.get("scores") or []
    earlier = _earlier_answers(run)
    rows = []
    for index, record in enumerate(records if isinstance(records, list) else []):
        question, answer, expected = asked(record), record.get("model_response", ""), reference_answer(record)
        cells = {"#": index + 1, "asked": question, "expected": expected, "answer": answer,
                 "ROUGE-L": round(rouge_l(answer, expected), 4),
                 "judge": judged[index] if index < len(judged) else None}
        if earlier:
            cells["before"] = earlier.get(question)
        rows.append(cells)
    page = _page(run, scores, rows, _loss_plot(run), bool(earlier))
    with atomic_write(run.report) as f:
        f.write(page)
    return run.report


def _earlier_answers(run: Run) -> dict[str, str]:
    """The answers of the run this one started from (``model.weights``), by what was asked."""
    if run.origin is None:
        return {}
    records = read_json(run.origin.responses, missing=[], invalid=[])
    return {asked(r): r.get("model_response", "") for r in records if isinstance(r, dict)} \
        if isinstance(records, list) else {}


def _loss_plot(run: Run) -> str | None:
    """The loss curves as a PNG data URI (the page needs no file beside it): the run's ``loss.png``,
    drawn here only where the run has none."""
    if run.loss_plot.is_file():
        png = run.loss_plot.read_bytes()
    else:
        scalars = read_scalars(run.tensorboard) if run.tensorboard.is_dir() else {}
        if "train_loss" not in scalars:
            return None
        figure = loss_figure(scalars)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        plt.close(figure)
        png = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _settings(run: Run) -> dict[str, str]:
    """The main settings the run was composed with, and the precision that ran."""
    if run.config is None:
        return {}
    summary = RunSummary(run.config, plan=run.execution_plan())
    found = {}
    for key in SETTINGS:
        value = summary.get(key)
        if value is None or (key == "model.name" and summary.get("model.weights")):
            continue  # the model of given weights is theirs, whatever shape the name has
        found[key] = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    if summary.plan is not None:
        found["precision that ran"] = summary.plan.precision or ""
    return found


def _page(run: Run, scores: dict, rows: list[dict], plot: str | None, before: bool) -> str:
    e = html.escape
    numbers = {k: v for k, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if isinstance(scores.get("judge"), dict) and scores["judge"].get("mean") is not None:
        numbers["judge mean"] = scores["judge"]["mean"]
    numbers.update(run.benchmark_scores())
    columns = ["#", "asked", "expected", "answer", *(["before"] if before else []), "ROUGE-L", "judge"]
    headings = {"before": "answer before (the run it started from)"}
    head = "".join(f'<th data-column="{i}" data-numeric="{int(c in ("#", "ROUGE-L", "judge"))}">'
                   f'{e(headings.get(c, c))}</th>' for i, c in enumerate(columns))
    body = "".join("<tr>" + "".join(cell(r.get(c)) for c in columns) + "</tr>" for r in rows)
    settings = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _settings(run).items())
    overrides = " ".join(run.overrides())
    metrics = "".join(f"<tr><th>{e(k)}</th><td>{v:.4g}</td></tr>" for k, v in numbers.items())
    image = f'<img alt="loss curves" src="{plot}">' if plot else "<p>No loss curves: the run logged no train_loss.</p>"
    return PAGE.format(title=e(run.name), overrides=e(overrides or "(none)"), settings=settings, metrics=metrics
                       or "<tr><td>no scores yet</td></tr>", image=image, head=head, body=body, count=len(rows),
                       table_script=TABLE_SCRIPT)


def cell(value) -> str:
    """A table cell; a number carries its value for sorting."""
    if value is None:
        return '<td data-value="">-</td>'
    if isinstance(value, (int, float)):
        return f'<td data-value="{value}">{value:g}</td>'
    return f"<td>{html.escape(str(value))}</td>"


# Sorting by a column heading (numeric where its th says data-numeric="1") and filtering the rows
# of the table #records, the count of rows shown in #shown: what every page with records shares.
TABLE_SCRIPT = """const table = document.getElementById("records"), tbody = table.tBodies[0];
let sorted = {column: -1, up: true};
function sortBy(column, up) {
  const numeric = table.tHead.rows[0].cells[column].dataset.numeric === "1";
  const key = row => numeric ? parseFloat(row.cells[column].dataset.value) : row.cells[column].textContent;
  const rows = Array.from(tbody.rows);
  rows.sort((a, b) => {
    const x = key(a), y = key(b);
    if (numeric && isNaN(x) !== isNaN(y)) return isNaN(x) ? 1 : -1;
    const order = numeric ? x - y : x.localeCompare(y);
    return up ? order : -order;
  });
  rows.forEach(row => tbody.appendChild(row));
  sorted = {column, up};
}
for (const th of table.tHead.rows[0].cells) {
  th.addEventListener("click", () => {
    const column = th.cellIndex;
    sortBy(column, sorted.column === column ? !sorted.up : true);
  });
}
document.getElementById("filter").addEventListener("input", event => {
  const words = event.target.value.toLowerCase();
  let shown = 0;
  for (const row of tbody.rows) {
    const match = row.textContent.toLowerCase().includes(words);
    row.hidden = !match;
    shown += match;
  }
  document.getElementById("shown").textContent = shown;
});
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}: gpt2-lightning run report</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; }} th, td {{ border: 1px solid #ccc; padding: 4px 8px; vertical-align: top;
text-align: left; white-space: pre-wrap; }} #records th {{ cursor: pointer; background: #f3f3f3; }}
#records td {{ max-width: 28em; }} img {{ max-width: 100%; }} .bar {{ margin: 0.8em 0; }}
</style></head><body>
<h1>{title}</h1>
<p>Given on the command line: <code>{overrides}</code></p>
<h2>Settings</h2><table>{settings}</table>
<h2>Scores</h2><table>{metrics}</table>
<h2>Loss</h2>{image}
<h2>Test records (<span id="shown">{count}</span> of {count})</h2>
<div class="bar"><input id="filter" type="search" placeholder="filter: words in any column" size="40">
<button id="worst">worst answers first</button> (click a column heading to sort by it)</div>
<table id="records"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<script>
{table_script}document.getElementById("worst").addEventListener("click", () => {{
  const rouge = Array.from(table.tHead.rows[0].cells).findIndex(th => th.textContent === "ROUGE-L");
  sortBy(rouge, true);
}});
</script></body></html>
"""
