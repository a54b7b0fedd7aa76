"""``experiment=dpo``: preference tuning as one more stage of the training job, after an SFT run."""

import html
import json
import math
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from gpt2_lightning.apps.job import run
from gpt2_lightning.data.records import load_records
from gpt2_lightning.errors import CheckpointMismatchError, ConfigError
from gpt2_lightning.evaluate.plot import read_scalars
from gpt2_lightning.export.run import Run
from tests.conftest import REPO_ROOT, TINY_RUN, compose_train, run_train_py
from tests.test_reliability import final_weights, wait_for_step

DPO = ("experiment=dpo-quickstart", "trainer=cpu", "trainer.enable_model_summary=false",
       "callbacks.progress_bar.refresh_rate=0", "~callbacks.response_sample")


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """A short SFT run of ``model=tiny`` on the sample, with its export (the DPO runs' weights)."""
    run_dir = tmp_path_factory.mktemp("sft")
    settings = [a for a in TINY_RUN if a != "respond=false"]
    trained = run_train_py(*settings, "export=true", "trainer.max_epochs=2", "generation.max_new_tokens=8",
                           f"hydra.run.dir={run_dir}")
    assert trained.returncode == 0, trained.stderr[-2000:]
    return run_dir


def gpt2(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "gpt2_lightning", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_dpo_from_an_sft_run_starts_at_ln_2_the_val_margin_rises_and_the_run_answers_every_verb(sft_run, tmp_path):
    run_dir = tmp_path / "dpo"
    trained = run_train_py(*DPO, f"model.weights={sft_run}", "generation.max_new_tokens=8", f"hydra.run.dir={run_dir}")
    assert trained.returncode == 0, trained.stderr[-2000:]
    scalars = read_scalars(run_dir / "tensorboard")
    assert scalars["train_loss"][0] == (0, pytest.approx(math.log(2), abs=1e-6))
    margins = [value for _, value in scalars["val_rewards_margin"]]
    assert len(margins) == 5 and margins[-1] > margins[0] > 0
    assert {f"{split}_{name}" for split in ("train", "val") for name in
            ("loss", "rewards_chosen", "rewards_rejected", "rewards_margin", "rewards_accuracy", "logps_chosen",
             "logps_rejected")} <= set(scalars)
    assert "val_ppl" not in scalars  # a DPO loss has no perplexity
    scores = json.loads((run_dir / "eval.json").read_text())
    assert scores["n"] == 6 and "test_loss" in scores
    responses = json.loads((run_dir / "responses.json").read_text())
    assert all({"chosen", "rejected", "model_response"} <= set(r) for r in responses)
    assert Run(run_dir).reference_logprobs.is_file() and (run_dir / "loss.png").is_file()
    # The report shows the SFT run's answers beside the DPO run's, record by record.
    page = (run_dir / "report.html").read_text()
    assert "answer before (the run it started from)" in page
    for record in json.loads((sft_run / "responses.json").read_text()):
        assert html.escape(record["model_response"]) in page
    # The style and shape came from the SFT run's weights.
    assert json.loads((run_dir / "export" / "config.json").read_text())["model"]["emb_dim"] == 64

    chatted = gpt2("chat", str(run_dir), "--prompt", "Name a colour.", "--max-new-tokens", "4")
    assert chatted.returncode == 0 and chatted.stdout.strip(), chatted.stderr[-2000:]
    answered = gpt2("respond", str(run_dir), "--out", str(tmp_path / "again.json"), "--max-new-tokens", "4")
    assert answered.returncode == 0, answered.stderr[-2000:]
    assert len(json.loads((tmp_path / "again.json").read_text())) == 6
    exported = gpt2("export", str(run_dir), "--format", "hf", "--out", str(tmp_path / "hf"))
    assert exported.returncode == 0 and (tmp_path / "hf" / "model.safetensors").is_file(), exported.stderr[-2000:]
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "# dpo-quickstart-tiny" in card and "dpo]" in card and "## Preference tuning" in card
    assert f"Tuned from `{sft_run}`" in card and "sigmoid loss, beta 0.1" in card


def test_prefs_turns_a_runs_training_split_into_preferences_that_dpo_trains_on(sft_run, tmp_path):
    out = tmp_path / "prefs.json"
    made = gpt2("prefs", str(sft_run), "--out", str(out), "--max-new-tokens", "12")
    assert made.returncode == 0, made.stderr[-2000:]
    preferences = load_records(out)
    train = Run(sft_run).split_records("train")
    answered = json.loads((tmp_path / "prefs-answers.json").read_text())
    assert [(r["instruction"], r["input"]) for r in answered] == [(r["instruction"], r["input"]) for r in train]
    expected = [{"instruction": r["instruction"], "input": r["input"], "chosen": r["output"],
                 "rejected": r["model_response"]} for r in answered
                if r["model_response"].strip() not in ("", r["output"].strip())]
    assert preferences == expected and 0 < len(expected) <= 51
    assert f"{len(expected)} preferences in {out} ({51 - len(expected)} of 51 records left out" in made.stdout
    again = gpt2("prefs", str(sft_run), "--out", str(out))
    assert again.returncode == 2 and "exists; give another --out, or --force" in again.stderr
    run(compose_train(tmp_path / "dpo", *DPO, f"model.weights={sft_run}", f"data.path={out}", "trainer.max_epochs=1",
                      "respond=false", "export=false", "plot=false", "data.split=[0.8,0.1,0.1]"))
    assert read_scalars(tmp_path / "dpo" / "tensorboard")["val_rewards_margin"][-1][1] > 0


def test_lora_dpo_uses_the_base_with_adapters_off_as_its_reference(sft_run, tmp_path):
    run(compose_train(tmp_path, *DPO, f"model.weights={sft_run}", "adapter=lora", "adapter.r=4",
                      "trainer.max_epochs=1", "respond=false", "export=false", "test=false", "plot=false"))
    scalars = read_scalars(tmp_path / "tensorboard")
    assert scalars["train_loss"][0] == (0, pytest.approx(math.log(2), abs=1e-6))
    assert scalars["val_rewards_margin"][-1][1] > 0
    assert not Run(tmp_path).reference_logprobs.exists()  # nothing precomputed
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state and all(k.endswith(("lora_a", "lora_b")) for k in state)


def test_preference_data_and_the_dpo_objective_come_together(sft_run, tmp_path):
    with pytest.raises(ConfigError, match="data=preference"):
        run(compose_train(tmp_path / "a", *DPO, f"model.weights={sft_run}", "data=sample"))
    with pytest.raises(ConfigError, match="give model.weights=<an SFT run"):
        run(compose_train(tmp_path / "c", *DPO))
    with pytest.raises(ConfigError, match="experiment=dpo"):
        run(compose_train(tmp_path / "b", *TINY_RUN, "data=sample-preference"))


def test_sft_on_a_preference_file_trains_on_the_chosen_answers(tmp_path):
    from gpt2_lightning.data.datamodule import InstructionDataModule
    from gpt2_lightning.model.tokenizer import decode
    from gpt2_lightning.resources import sample_preference_data

    datamodule = InstructionDataModule(path=str(sample_preference_data()), mask_prompt=True)
    datamodule.setup()
    ids, scored = datamodule.datasets["train"][0]
    record = datamodule.datasets["train"].records[0]
    assert decode(ids[scored].tolist()) == record["chosen"] + "<|endoftext|>"


def test_a_resumed_dpo_run_without_its_reference_log_probabilities_stops_with_one_clear_error(sft_run, tmp_path):
    settings = (*DPO, f"model.weights={sft_run}", "respond=false", "export=false", "test=false", "plot=false")
    run(compose_train(tmp_path, *settings, "trainer.max_steps=3"))
    Run(tmp_path).reference_logprobs.unlink()
    with pytest.raises(CheckpointMismatchError, match="reference log-probabilities this run trained against"):
        run(compose_train(tmp_path, *settings, "trainer.max_steps=6", f"ckpt_path={Run(tmp_path).last_checkpoint}"))


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_dpo_run(sft_run, tmp_path):
    settings = (*DPO, f"model.weights={sft_run}", "respond=false", "export=false", "test=false", "plot=false",
                "data.batch_size=4", "trainer.max_epochs=2", "callbacks.last_checkpoint.train_time_interval=null",
                "callbacks.last_checkpoint.every_n_train_steps=3")
    assert run_train_py(*settings, f"hydra.run.dir={tmp_path / 'whole'}").returncode == 0
    killed = subprocess.Popen([sys.executable, str(REPO_ROOT / "train.py"), *settings,
                               f"hydra.run.dir={tmp_path / 'killed'}"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    wait_for_step(tmp_path / "killed", 15, killed)  # 51 records, batch 4: 13 steps an epoch; this is epoch 1
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    resumed = run_train_py(f"ckpt_path={tmp_path / 'killed' / 'checkpoints' / 'last.ckpt'}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    step_whole, whole = final_weights(tmp_path / "whole")
    step_resumed, weights = final_weights(tmp_path / "killed")
    assert step_whole == step_resumed == 26
    for name, tensor in whole.items():
        torch.testing.assert_close(weights[name], tensor, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.slow
def test_two_processes_tune_dpo_from_ln_2_against_the_reference_one_process_computes(sft_run, tmp_path):
    settings = (*DPO, f"model.weights={sft_run}", "respond=false", "export=false", "plot=false", "trainer.max_steps=4",
                "data.batch_size=4")
    one = run_train_py(*settings, f"hydra.run.dir={tmp_path / 'one'}")
    two = run_train_py(*settings, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                       f"hydra.run.dir={tmp_path / 'two'}", timeout=300)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr + two.stderr)[-3000:]
    first = read_scalars(tmp_path / "two" / "tensorboard")["train_loss"][0]
    assert first == (0, pytest.approx(math.log(2), abs=1e-6))
    assert "sync_dist" not in two.stdout + two.stderr  # every logged metric is synced across processes
    references = [np.load(tmp_path / run / "reference-logprobs.npz") for run in ("one", "two")]
    for split in ("train", "val", "test"):
        np.testing.assert_allclose(references[1][split], references[0][split], rtol=1e-6)
