"""Several processes (DDP over gloo on the CPU), as train.py runs them: nothing counted twice,
nobody left waiting."""

import json

import pytest
import torch

from gpt2_lightning.evaluate.plot import read_scalars
from gpt2_lightning.export.folder import load_export
from gpt2_lightning.train.checkpoints import model_from_checkpoint
from tests.conftest import run_train_py

TINY = ["model=tiny", "data=sample", "callbacks.progress_bar.refresh_rate=0", "trainer.enable_model_summary=false",
        "~callbacks.response_sample"]
TWO_PROCESSES = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]


@pytest.mark.slow
def test_test_loss_with_two_processes_equals_one_process(tmp_path):
    # 6 test records in batches of 2: 3 batches, which 2 processes cannot share evenly.
    evaluate_only = [*TINY, "train=false", "test=true", "respond=false", "plot=false", "export=false",
                     "data.batch_size=2"]
    one = run_train_py(*evaluate_only, "trainer=cpu", f"hydra.run.dir={tmp_path / 'one'}")
    two = run_train_py(*evaluate_only, *TWO_PROCESSES, f"hydra.run.dir={tmp_path / 'two'}")
    assert one.returncode == 0 and two.returncode == 0, (one.stderr + two.stderr)[-3000:]
    [(_, alone)] = read_scalars(tmp_path / "one" / "tensorboard")["test_loss"]
    [(_, shared)] = read_scalars(tmp_path / "two" / "tensorboard")["test_loss"]
    assert shared == pytest.approx(alone, abs=1e-5)
    assert "sync_dist" not in two.stdout + two.stderr  # every logged metric is synced across processes


@pytest.mark.slow
def test_nan_on_one_process_stops_every_process_with_the_message(tmp_path):
    result = run_train_py(*TINY, *TWO_PROCESSES, "trainer.max_steps=6", "respond=false", "plot=false",
                          "+callbacks.poison._target_=tests.nan_on_one_rank.NaNOnOneRank",
                          f"hydra.run.dir={tmp_path}", timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "error: the training loss is nan at step 2 (epoch 0, batch 2)" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_two_processes_train_by_one_plan_and_deliver_the_best_weights_once(tmp_path):
    result = run_train_py(*TINY, *TWO_PROCESSES, "trainer.max_steps=8", "trainer.val_check_interval=4",
                          "generation.max_new_tokens=4", f"hydra.run.dir={tmp_path}",
                          "+callbacks.plans._target_=tests.plan_of_each_rank.PlanOfEachRank",
                          f"+callbacks.plans.folder={tmp_path}", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # The process Lightning started trains by the run's plan.json, handed to it on its command line.
    saved = json.loads((tmp_path / "plan.json").read_text())
    ranks = [json.loads((tmp_path / f"plan-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["plan"] for r in ranks] == [saved, saved]
    assert ranks[0]["handed"] == [f"plan='{tmp_path / 'plan.json'}'"] == ranks[1]["handed"]
    [best] = (tmp_path / "checkpoints").glob("best-*.ckpt")
    exported, _ = load_export(tmp_path / "export")
    for name, tensor in model_from_checkpoint(best)[0].state_dict().items():
        torch.testing.assert_close(exported.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    answered = json.loads((tmp_path / "responses.json").read_text())
    assert len(answered) == 6 and json.loads((tmp_path / "eval.json").read_text())["n"] == 6
