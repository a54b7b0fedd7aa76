"""``gpt2 compare``: the runs of a real Hydra sweep, ranked, with what each set differently."""

import json

import pytest

from gpt2_lightning.apps.compare import find_runs, ranked
from gpt2_lightning.export.run import Run
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


def test_each_run_logs_its_settings_with_its_final_scores_for_tensorboards_hparams_tab(sweep):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.util import tensor_util

    for job in "012":
        run = sweep / job
        values = [v for path in sorted((run / "tensorboard").glob("events.out.tfevents.*"))
                  for event in EventFileLoader(str(path)).Load() for v in event.summary.value]
        [start] = [v for v in values if v.tag == "_hparams_/session_start_info"]
        assert start.metadata.plugin_data.plugin_name == "hparams"
        info = plugin_data_pb2.HParamsPluginData.FromString(start.metadata.plugin_data.content).session_start_info
        hparams = {k: v.ListFields()[0][1] for k, v in info.hparams.items()}
        [given] = [o for o in Run(run).overrides() if o.startswith("optimizer.lr=")]
        assert hparams["optimizer.lr"] == pytest.approx(float(given.split("=")[1]))
        assert hparams["model"] == "tiny" and hparams["trainer.max_steps"] == 6 and "trainer.precision" in hparams
        scores = json.loads((run / "eval.json").read_text())
        logged = {v.tag: v.simple_value if v.HasField("simple_value") else float(tensor_util.make_ndarray(v.tensor))
                  for v in values if v.tag.startswith("hp/")}
        assert logged == pytest.approx({"hp/best_val_loss": scores["best_val_loss"], "hp/test_loss": scores["test_loss"],
                                        "hp/rouge_l": scores["rouge_l"], "hp/exact_match": scores["exact_match"]})
