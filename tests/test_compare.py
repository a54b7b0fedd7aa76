"""``gpt2 compare``: the runs of a real Hydra sweep, ranked, with what each set differently."""

import json

import pytest

from gpt2_lightning.apps.compare import find_runs, ranked
from tests.conftest import REPO_ROOT, run_train_py
from tests.test_command import gpt2


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    result = run_train_py("-m", "model=tiny", "data=sample", "trainer=cpu", "trainer.max_steps=6",
                          "trainer.val_check_interval=3", "optimizer.lr=1e-4,1e-2,3e-3", "generation.max_new_tokens=2",
                          "plot=false", "export=false", "callbacks.progress_bar.refresh_rate=0",
                          "~callbacks.response_sample", f"hydra.sweep.dir={folder}", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def test_a_sweep_folder_stands_for_its_runs_ranked_by_best_val_loss(sweep):
    shown = gpt2("compare", str(sweep), "--json", cwd=REPO_ROOT)
    assert shown.returncode == 0, shown.stderr[-2000:]
    rows = json.loads(shown.stdout)
    assert sorted(r["run"] for r in rows) == [str(sweep / job) for job in "012"]
    scores = {r["run"]: json.loads((sweep / r["run"] / "eval.json").read_text()) for r in rows}
    assert [r["best_val_loss"] for r in rows] == sorted(s["best_val_loss"] for s in scores.values())
    for r in rows:
        assert r["test_loss"] == scores[r["run"]]["test_loss"] and r["rouge_l"] == scores[r["run"]]["rouge_l"]
        assert r["train_seconds"] > 0
    assert {o for r in rows for o in r["overrides"] if o.startswith("optimizer.lr=")} == \
        {"optimizer.lr=0.0001", "optimizer.lr=0.01", "optimizer.lr=0.003"}


def test_the_table_says_the_shared_overrides_once_and_each_runs_own_on_its_line(sweep):
    shown = gpt2("compare", str(sweep / "2"), str(sweep), "--sort", "test_loss", cwd=REPO_ROOT)
    assert shown.returncode == 0, shown.stderr[-2000:]
    first, header, *lines = shown.stdout.splitlines()
    assert first.startswith("all runs: ") and "model=tiny" in first and "optimizer.lr" not in first
    assert header.split()[:3] == ["#", "run", "overrides"] and len(lines) == 3  # a run given twice is one row
    for line in lines:
        assert "optimizer.lr=" in line and "model=tiny" not in line
    losses = [float(line.split()[5]) for line in lines]
    assert losses == sorted(losses)


def test_runs_without_a_score_rank_last_and_a_folder_without_runs_is_one_line(sweep, tmp_path):
    rows = [{"run": "a", "rouge_l": None}, {"run": "b", "rouge_l": 0.2}, {"run": "c", "rouge_l": 0.5}]
    assert [r["run"] for r in ranked(rows, "rouge_l")] == ["c", "b", "a"]
    assert find_runs(tmp_path) == []
    shown = gpt2("compare", str(tmp_path), cwd=REPO_ROOT)
    assert shown.returncode == 2 and shown.stderr.strip() == f"error: {tmp_path}: holds no runs (no .hydra/config.yaml " \
        f"in it or in its folders)"
