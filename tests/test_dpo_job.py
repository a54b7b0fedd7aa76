"""``experiment=dpo``: preference tuning as one more stage of the training job, after an SFT run."""

import json
import math
import signal
import subprocess
import sys

import pytest
import torch

from gpt2_lightning.apps.train import run
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
    run(compose_train(run_dir, *TINY_RUN, "export=true", "trainer.max_epochs=2"))
    return run_dir


def gpt2(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "gpt2_lightning", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_dpo_from_an_sft_run_starts_at_ln_2_the_val_margin_rises_and_the_run_answers_every_verb(sft_run, tmp_path):
    run_dir = tmp_path / "dpo"
    run(compose_train(run_dir, *DPO, f"model.weights={sft_run}", "generation.max_new_tokens=8"))
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
    # The style and shape came from the SFT run's weights.
    assert json.loads((run_dir / "export" / "config.json").read_text())["model"]["emb_dim"] == 64

    chatted = gpt2("chat", str(run_dir), "--prompt", "Name a colour.", "--max-new-tokens", "4")
    assert chatted.returncode == 0 and chatted.stdout.strip(), chatted.stderr[-2000:]
    answered = gpt2("respond", str(run_dir), "--out", str(tmp_path / "again.json"), "--max-new-tokens", "4")
    assert answered.returncode == 0, answered.stderr[-2000:]
    assert len(json.loads((tmp_path / "again.json").read_text())) == 6
    exported = gpt2("export", str(run_dir), "--format", "hf", "--out", str(tmp_path / "hf"))
    assert exported.returncode == 0 and (tmp_path / "hf" / "model.safetensors").is_file(), exported.stderr[-2000:]


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
