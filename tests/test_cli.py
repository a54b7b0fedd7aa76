"""``train.py`` as a user runs it: real subprocesses, real files."""

import json

import pytest

from gpt2_lightning.evaluate.plot import read_scalars
from tests.conftest import run_train_py

TINY = ["model=tiny", "data=sample", "trainer=cpu", "trainer.max_steps=2", "respond=false",
        "plot=false", "export=false", "test=false", "callbacks.progress_bar.refresh_rate=0"]

BAD_DATA = [
    ("", "the file is empty, it holds no records"),
    ('[{"instruction": "a", "output": "b"},\n  {"instruction": 3, "output": "b"}]',
     "record 2: field 'instruction' must be a string, got a JSON number"),
    ('[{"instruction": "a"}]', "record 1: missing field 'output' (the record's fields: instruction)"),
    ('[{"instruction": "", "output": "b"}]', "record 1: field 'instruction' is empty"),
    ('[{"instruction": "a", "output": "b"}', "invalid JSON at line 1, column 37: Expecting ',' delimiter"),
    ('{"records": []}', "expected a JSON array of records (or a .jsonl file), got a JSON object"),
]


@pytest.mark.slow
@pytest.mark.parametrize("content, message", BAD_DATA)
def test_bad_data_is_one_clear_line(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    result = run_train_py(*TINY, f"data.path={path}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: {path}: {message}"
    assert "Traceback" not in result.stderr
    assert f"error: {path}: {message}" in (tmp_path / "run" / "train.log").read_text()  # the log says why too


@pytest.mark.slow
def test_config_errors_stop_before_any_work(tmp_path):
    result = run_train_py(*TINY, "data.batch_size=0", f"hydra.run.dir={tmp_path / 'a'}")
    assert result.returncode == 2 and "error: data.batch_size must be at least 1, got 0" in result.stderr
    result = run_train_py(*TINY, "data.split=[0.5,0.2,0.2]", f"hydra.run.dir={tmp_path / 'b'}")
    assert result.returncode == 2 and "must be 3 non-negative numbers summing to 1" in result.stderr
    result = run_train_py(*TINY, "data.prompt_style=vicuna", f"hydra.run.dir={tmp_path / 'c'}")
    assert result.returncode == 2 and "unknown prompt style 'vicuna'" in result.stderr
    result = run_train_py(*TINY, "model=gpt2-huge", f"hydra.run.dir={tmp_path / 'd'}")
    assert result.returncode == 2 and result.stderr.strip() == (
        "error: In 'train.yaml': Could not find 'model/gpt2-huge'; Available options in 'model': "
        "gpt2-large, gpt2-medium, gpt2-small, gpt2-xl, mini, tiny")
    result = run_train_py(*TINY, "trainer.precision=64", f"hydra.run.dir={tmp_path / 'e'}")
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        "error: trainer.precision=64 is not one this project trains in; use auto, 32-true, 32, bf16-mixed, "
        "bf16-true, 16-mixed (16-mixed on GPUs)")
    result = run_train_py(*TINY, "trainer.max_epoch=3", f"hydra.run.dir={tmp_path / 'f'}")
    assert result.returncode == 2 and result.stderr.strip() == (
        "error: Could not override 'trainer.max_epoch'; To append to your config use +trainer.max_epoch=3")
    result = run_train_py(*TINY, "trainer.val_check_interval=10", f"hydra.run.dir={tmp_path / 'g'}")
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        "error: trainer.val_check_interval=10 is more than the 7 training batches of an epoch: give at most 7, a "
        "fraction of an epoch (0.5), or trainer.check_val_every_n_epoch=null to count batches across epochs")
    assert not any((tmp_path / run / "checkpoints").exists() for run in "abcdefg")


def test_a_config_that_does_not_compose_is_reported_before_torch_or_lightning_is_imported(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    code = ("import atexit, runpy, sys\n"
            "atexit.register(lambda: print(sorted(m for m in ('torch', 'lightning') if m in sys.modules)))\n"
            f"sys.argv = [{str(REPO_ROOT / 'train.py')!r}, 'model=gpt2-huge']\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert (result.returncode, result.stdout.strip()) == (2, "[]"), result.stderr[-2000:]
    assert "Could not find 'model/gpt2-huge'" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_start_that_fails_before_training_leaves_no_run_directory_unless_one_was_named(tmp_path):
    result = run_train_py(*TINY, "data.batch_size=0", cwd=tmp_path)
    assert result.returncode == 2 and "error: data.batch_size must be at least 1, got 0" in result.stderr
    assert list(tmp_path.iterdir()) == []  # not even outputs/<date>/
    result = run_train_py(*TINY, "data.batch_size=0", "hydra.run.dir=mine", cwd=tmp_path)
    assert result.returncode == 2
    assert "error: data.batch_size must be at least 1, got 0" in (tmp_path / "mine" / "train.log").read_text()


@pytest.mark.slow
def test_quickstart_runs_the_whole_pipeline(tmp_path):
    run_dir = tmp_path / "quickstart"
    result = run_train_py("experiment=quickstart", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("checkpoints/last.ckpt", "tensorboard", ".hydra/config.yaml", "train.log", "loss.png",
                 "responses.json", "eval.json", "export/model.safetensors", "export/config.json"):
        assert (run_dir / name).exists(), name
    assert len(list((run_dir / "checkpoints").glob("best-*.ckpt"))) == 1
    responses = json.loads((run_dir / "responses.json").read_text())
    assert len(responses) == 6 and all(isinstance(r["model_response"], str) for r in responses)
    assert all(r["instruction"] and r["output"] for r in responses)
    scores = json.loads((run_dir / "eval.json").read_text())
    assert scores["n"] == 6 and 0.0 <= scores["rouge_l"] <= 1.0 and scores["test_loss"] > 0
    # Answers a newcomer can read as learned: most are sentences of words. A model of 51 examples
    # may end an answer at once (seeds 5, 6 and 123 gave 1, 2 and 0-1 empty ones of 6, by kernel).
    assert scores["empty_responses"] <= 2 and scores["rouge_l"] > 0.1 and scores["test_loss"] < 4.0
    sentences = [r for r in responses if len(r["model_response"].split()) >= 3]
    assert len(sentences) >= 4 and scores["empty_responses"] + len(sentences) == 6
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scalars = read_scalars(run_dir / "tensorboard")
    assert scalars["train_loss"][-1][1] < scalars["train_loss"][0][1]
    assert "model: mini, 11.5M parameters (11.48M trainable), precision " in (run_dir / "train.log").read_text()
    assert sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file()) < 300e6


@pytest.mark.slow
def test_multirun_makes_one_run_folder_per_value(tmp_path):
    result = run_train_py("-m", *TINY, "optimizer.lr=1e-4,3e-4", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in runs] == ["0", "1"]
    for run, lr in zip(runs, ("0.0001", "0.0003")):
        assert (run / "checkpoints" / "last.ckpt").is_file()
        assert f"lr={lr}" in (run / ".hydra" / "overrides.yaml").read_text().replace("- optimizer.", "")


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path):
    result = run_train_py(*TINY, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                          "trainer.max_steps=3", f"hydra.run.dir={tmp_path}")
    # Exit code and results, not stderr noise: gloo may print at teardown.
    assert result.returncode == 0, result.stderr[-3000:]
    import torch
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 3


@pytest.mark.slow
def test_optuna_sweep_runs_trials_and_reports_the_best(tmp_path):
    result = run_train_py("-m", "hparams_search=optuna", *TINY, "hydra.sweeper.n_trials=2",
                          "hydra.sweeper.sampler.n_startup_trials=2", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["0", "1"]
    best = (tmp_path / "optimization_results.yaml").read_text()
    assert "optimizer.lr" in best and "data.batch_size" in best and "best_value" in best


@pytest.mark.slow
def test_the_console_and_train_log_have_one_line_per_event_and_no_noise(tmp_path):
    result = run_train_py("model=tiny", "data=sample", "trainer=cpu", "trainer.max_steps=2", "generation.max_new_tokens=2",
                          "callbacks.progress_bar.refresh_rate=0", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr
    assert console.count("`Trainer.fit` stopped: `max_steps=2` reached.") == 1
    assert "Tip:" not in console and "LeafSpec" not in console and "model summary" not in console
    log = (tmp_path / "train.log").read_text()
    assert "`Trainer.fit` stopped" in log and "model: tiny" in log and "eval: {" in log
    # Two steps log no train_loss (trainer.log_every_n_steps=5): the plot is skipped, not a failure.
    assert "no loss plot: no train_loss was logged" in log and not (tmp_path / "loss.png").exists()
