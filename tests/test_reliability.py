"""Faults a long fine-tune meets: kills, signals, bad files, NaN, unwritable outputs."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt2_lightning.apps.job import run
from gpt2_lightning.data.records import load_records, validate_record
from gpt2_lightning.errors import DataError, TrainingDivergedError
from gpt2_lightning.evaluate.plot import read_scalars
from gpt2_lightning.io import atomic_write
from tests.conftest import REPO_ROOT, TINY_RUN, compose_train, run_train_py

RESUMABLE = ("model=tiny", "data=sample", "trainer=cpu", "respond=false", "plot=false", "export=false",
             "test=false", "data.batch_size=4", "trainer.max_epochs=2", "trainer.val_check_interval=1.0",
             "callbacks.last_checkpoint.train_time_interval=null", "callbacks.last_checkpoint.every_n_train_steps=3",
             "callbacks.progress_bar.refresh_rate=0",
             "~callbacks.response_sample", "trainer.enable_model_summary=false")


def final_weights(run_dir):
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return state["global_step"], state["state_dict"]


def start_train(run_dir, *overrides):
    return subprocess.Popen([sys.executable, str(REPO_ROOT / "train.py"), *RESUMABLE, *overrides,
                             f"hydra.run.dir={run_dir}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def wait_for_step(run_dir, step, process, timeout=300):
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if last.is_file() and torch.load(last, weights_only=True)["global_step"] >= step:
            return
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint at step {step}")


@pytest.mark.slow
@pytest.mark.parametrize("adapter", ["none", "lora"])
def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_base, adapter):
    # 51 training records, batch 4: 13 steps per epoch, 26 in all; last.ckpt every 3 steps. The
    # LoRA run has dropout: the resumed run must draw the same masks.
    extra = () if adapter == "none" else ("adapter=lora", "adapter.r=4", "adapter.dropout=0.05", "model.pretrained=true",
                                          f"model.weights={tiny_base}")
    assert run_train_py(*RESUMABLE, *extra, f"hydra.run.dir={tmp_path / 'whole'}").returncode == 0
    killed = start_train(tmp_path / "killed", *extra)
    wait_for_step(tmp_path / "killed", 15, killed)  # epoch 1, batch 2
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    step_at_kill, _ = final_weights(tmp_path / "killed")
    assert 15 <= step_at_kill < 26
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    showing = [a for a in RESUMABLE if not a.startswith("callbacks.progress_bar.")]
    resumed = run_train_py(*showing, *extra, f"ckpt_path={last}", f"hydra.run.dir={tmp_path / 'resumed'}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # The resumed epoch is shown as one, with its total (13 batches) and so an ETA, from the batch it resumed at.
    bars = [line for line in resumed.stdout.replace("\r", "\n").splitlines() if line.startswith("Epoch 1:")]
    assert bars and all("/13 [" in line for line in bars) and "?" not in bars[-1].split("[")[0]
    step_whole, whole = final_weights(tmp_path / "whole")
    step_resumed, weights = final_weights(tmp_path / "resumed")
    assert step_whole == step_resumed == 26
    assert set(weights) == set(whole) and all(k.endswith(("lora_a", "lora_b")) == (adapter == "lora") for k in whole)
    for name, tensor in whole.items():
        torch.testing.assert_close(weights[name], tensor, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.slow
def test_resuming_from_last_ckpt_alone_continues_the_same_run(tmp_path):
    run_dir = tmp_path / "run"
    finish = ("respond=true", "plot=true", "generation.max_new_tokens=4")
    killed = start_train(run_dir, *finish)
    wait_for_step(run_dir, 15, killed)  # after the first validation (step 13): a best checkpoint exists
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert len(list((run_dir / "checkpoints").glob("best-*.ckpt"))) == 1
    # Only the checkpoint, from another working directory: the run's own settings come back.
    resumed = run_train_py(f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no new run directory
    scalars = read_scalars(run_dir / "tensorboard")
    validations = [value for _, value in scalars["val_loss"]]
    assert [step for step, _ in scalars["val_loss"]] == [12, 25]  # both halves (steps count from 0)
    train_steps = [step for step, _ in scalars["train_loss"]]
    assert train_steps[0] < 5 and train_steps[-1] >= 24
    scores = json.loads((run_dir / "eval.json").read_text())
    assert scores["best_val_loss"] == pytest.approx(min(validations), rel=1e-6)
    [best] = (run_dir / "checkpoints").glob("best-*.ckpt")
    assert scores["best_checkpoint"] == best.name and f"val{min(validations):.4f}" in best.name
    assert (run_dir / "loss.png").is_file()
    assert "Traceback" not in resumed.stderr
    # Lightning's words for another kind of run: this one resumes its batches and owns that folder.
    said = resumed.stdout + resumed.stderr
    assert "not resumable" not in said and "exists and is not empty" not in said


@pytest.mark.slow
def test_resuming_a_finished_run_says_so_and_changes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    assert run_train_py(*RESUMABLE, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}").returncode == 0
    made = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file() and ".hydra" not in p.parts}
    resumed = run_train_py(f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"the run in {run_dir} is complete" in (run_dir / "train.log").read_text()
    after = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file() and ".hydra" not in p.parts}
    assert {p: t for p, t in after.items() if p.name != "train.log"} == \
        {p: t for p, t in made.items() if p.name != "train.log"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_finished_run_resumed_with_more_epochs_trains_them(tmp_path):
    # 51 training records, batch 4: 13 steps an epoch; last.ckpt is saved as training ends.
    run(compose_train(tmp_path, *TINY_RUN, "data.batch_size=4", "trainer.max_epochs=1"))
    run(compose_train(tmp_path, *TINY_RUN, "data.batch_size=4", "trainer.max_epochs=2",
                      f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"))
    assert final_weights(tmp_path)[0] == 26  # the second epoch whole, not skipped as already done


def test_a_run_stopped_by_max_steps_goes_on_inside_its_epoch_when_the_limit_is_lifted(tmp_path):
    # 51 training records, batch 4: 13 steps an epoch; step 17 stops in the second epoch.
    steps = (*TINY_RUN, "data.batch_size=4", "trainer.max_epochs=2", "trainer.val_check_interval=1.0",
             "~callbacks.response_sample")
    run(compose_train(tmp_path / "whole", *steps))
    run(compose_train(tmp_path / "parts", *steps, "trainer.max_steps=17"))
    run(compose_train(tmp_path / "parts", *steps, f"ckpt_path={tmp_path / 'parts' / 'checkpoints' / 'last.ckpt'}"))
    step_whole, whole = final_weights(tmp_path / "whole")
    step_parts, parts = final_weights(tmp_path / "parts")
    assert step_whole == step_parts == 26  # the rest of the second epoch trained, not skipped
    for name, tensor in whole.items():
        torch.testing.assert_close(parts[name], tensor, atol=1e-5, rtol=1e-4, msg=name)


def test_ckpt_path_auto_resumes_the_run_directorys_last_checkpoint_or_starts_fresh(tmp_path):
    from tests.test_training import Recorder

    fresh, again = Recorder(), Recorder()
    run(compose_train(tmp_path, *TINY_RUN, "trainer.max_steps=3", "ckpt_path=auto"), extra_callbacks=[fresh])
    run(compose_train(tmp_path, *TINY_RUN, "trainer.max_steps=5", "ckpt_path=auto"), extra_callbacks=[again])
    assert (fresh.first_step, again.first_step, again.batches) == (0, 3, 2)


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_and_sigterm_save_a_checkpoint_and_exit_cleanly(tmp_path, signum, code):
    process = start_train(tmp_path, "trainer.max_epochs=50")
    wait_for_step(tmp_path, 3, process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr[-2000:]
    assert "Traceback" not in stderr
    step, _ = final_weights(tmp_path)
    assert step > 3 and f"interrupted at step {step}; saved" in (tmp_path / "train.log").read_text()


@pytest.mark.slow
def test_ctrl_c_after_the_console_pipe_closed_still_saves_the_checkpoint(tmp_path):
    # As with `python train.py ... | tee log`: the same Ctrl-C ends tee first, then the run prints
    # (its progress bar, the warning that it stops) into a pipe nobody reads.
    process = subprocess.Popen([sys.executable, str(REPO_ROOT / "train.py"), *RESUMABLE, "trainer.max_epochs=50",
                                "callbacks.progress_bar.refresh_rate=1", f"hydra.run.dir={tmp_path}"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(tmp_path, 3, process)
    process.stdout.close()  # the reader is gone
    process.stdout = None
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr[-2000:]
    step, _ = final_weights(tmp_path)
    assert step > 3 and f"interrupted at step {step}; saved" in (tmp_path / "train.log").read_text()


def test_nan_loss_stops_training_naming_the_step(tmp_path):
    cfg = compose_train(tmp_path, *TINY_RUN, "trainer.max_steps=20", "optimizer.lr=1e30",
                        "trainer.val_check_interval=1.0")
    message = r"the training loss is (nan|inf) at step \d+ \(epoch 0, batch \d+\)"
    with pytest.raises(TrainingDivergedError, match=message):
        run(cfg)


def test_unknown_model_names_are_refused():
    from gpt2_lightning.model.gpt import GPTConfig
    with pytest.raises(ValueError, match="unknown model 'gpt2-huge'.*missing vocab_size"):
        GPTConfig.from_spec("gpt2-huge", {"drop_rate": 0.1})


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "responses.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write("half of the new")
            raise RuntimeError("disk full")
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]


@pytest.mark.slow
def test_unwritable_output_is_one_clear_line_and_leaves_no_partial_file(tmp_path):
    (tmp_path / "responses.json").mkdir()  # where the run wants to write a file
    result = run_train_py(*TINY_RUN, "trainer.max_steps=1", "respond=true", "generation.max_new_tokens=2",
                          f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'responses.json'}: Is a directory"
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob(".*.tmp")) and not list(tmp_path.glob("*.part"))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12)
record_like = st.dictionaries(
    st.sampled_from(["instruction", "input", "output", "response", "id", ""]),
    json_values | st.text(alphabet=st.characters(codec="utf-8"), max_size=2000), max_size=5)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(item=json_values | record_like)
def test_any_record_gives_a_record_or_a_data_error(item):
    try:
        record = validate_record(item, "data.json", 3)
    except DataError as err:
        assert str(err).startswith("data.json: record 3: ")
        return
    assert isinstance(record["instruction"], str) and record["instruction"].strip()
    assert isinstance(record["input"], str) and isinstance(record["output"], str)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(
    st.text(max_size=300),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.lists(record_like, max_size=5).map(json.dumps),
    json_values.map(json.dumps),
))
def test_any_file_gives_records_or_a_data_error(tmp_path, content):
    for name in ("data.json", "data.jsonl"):
        path = tmp_path / name
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
        try:
            records = load_records(path)
        except DataError as err:
            assert str(err).startswith(f"{path}: ")
            continue
        assert records and all(r["instruction"].strip() for r in records)


FINISHED_RUN = (*TINY_RUN, "data.batch_size=4", "trainer.max_epochs=2", "trainer.val_check_interval=1.0",
                "test=true", "export=true", "respond=true", "plot=true", "trainer.log_every_n_steps=1",
                "generation.max_new_tokens=2", "~callbacks.response_sample")
# 51 training records in batches of 4: 13 steps an epoch, 26 in all.
LAST_CHECKPOINT_SETTINGS = {
    "by steps": ("callbacks.last_checkpoint.train_time_interval=null",
                 "callbacks.last_checkpoint.every_n_train_steps=2"),  # the last step's save is a step's
    "by time": (),
    "at validations": ("callbacks.last_checkpoint.train_time_interval=null",),
    "none": ("~callbacks.last_checkpoint",),
}


def files_and_times(run_dir):
    return {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}


@pytest.mark.parametrize("setting", list(LAST_CHECKPOINT_SETTINGS))
def test_resuming_a_finished_run_changes_no_file_for_every_last_checkpoint_setting(tmp_path, setting):
    overrides = (*FINISHED_RUN, *LAST_CHECKPOINT_SETTINGS[setting])
    run(compose_train(tmp_path, *overrides))
    scores = json.loads((tmp_path / "eval.json").read_text())
    assert {"best_checkpoint", "best_val_loss", "test_loss", "rouge_l"} <= set(scores)
    made = files_and_times(tmp_path)
    resume = "ckpt_path=auto" if setting == "none" else f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"
    assert run(compose_train(tmp_path, *overrides, resume)) is None
    assert files_and_times(tmp_path) == made


@pytest.mark.parametrize("stage", ["test", "export", "respond"])
def test_a_run_whose_last_stages_did_not_finish_resumes_those_alone_with_its_best_checkpoint(tmp_path, stage):
    later = {"test": ("test", "export", "respond"), "export": ("export", "respond"), "respond": ("respond",)}[stage]
    run(compose_train(tmp_path, *FINISHED_RUN, *(f"{s}=false" for s in later)))
    [best] = (tmp_path / "checkpoints").glob("best-*.ckpt")
    made = files_and_times(tmp_path)
    run(compose_train(tmp_path, *FINISHED_RUN, f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"))
    after = files_and_times(tmp_path)
    changed = {p.relative_to(tmp_path).as_posix() for p in after if made.get(p) != after[p]
               and not (stage == "test" and "tensorboard" in p.relative_to(tmp_path).parts)}  # the test loss is logged
    expected = {"progress.json", "plan.json", "test-split.json",  # the job writes these as it starts
                *(["export/model.safetensors", "export/config.json"] if "export" in later else []),
                *(["responses.json", "responses.meta.json", "eval.json"] if "respond" in later else [])}
    assert changed == expected  # no training, no stage again: last.ckpt, TensorBoard and loss.png untouched
    scores = json.loads((tmp_path / "eval.json").read_text())
    assert scores["best_checkpoint"] == best.name and f"val{scores['best_val_loss']:.4f}" in best.name
    assert "test_loss" in scores


def test_a_resumed_run_that_trains_on_keeps_one_best_checkpoint(tmp_path):
    first = (*FINISHED_RUN, "trainer.max_epochs=1", "respond=false", "test=false", "export=false")
    run(compose_train(tmp_path, *first))
    [before] = (tmp_path / "checkpoints").glob("best-*.ckpt")
    run(compose_train(tmp_path, *FINISHED_RUN, "trainer.max_epochs=3",
                      f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"))
    [best] = (tmp_path / "checkpoints").glob("best-*.ckpt")
    assert best != before  # the validation loss of this data keeps falling over these epochs
    assert json.loads((tmp_path / "eval.json").read_text())["best_checkpoint"] == best.name
