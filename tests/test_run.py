"""``Run``: one object knows a run directory's layout; ``load_model`` and the verbs go through it;
``ChatModel`` answers from anything ``load_model`` takes."""

import json

import pytest
import torch

from gpt2_lightning import ChatModel, Run, SamplingParams
from gpt2_lightning.apps.job import run
from gpt2_lightning.data.prompts import get_style
from gpt2_lightning.errors import CheckpointMismatchError
from gpt2_lightning.export.load import load_model
from gpt2_lightning.generation.respond import answer_batch
from tests.conftest import TINY_RUN, compose_train


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    run(compose_train(folder, *TINY_RUN, "trainer.max_steps=2", "trainer.val_check_interval=2",
                      "data.prompt_style=phi3", "~callbacks.response_sample"))
    (folder / ".hydra").mkdir()  # what Hydra writes beside a run started by train.py
    (folder / ".hydra" / "config.yaml").write_text("model:\n  name: tiny\n")
    return folder


def test_a_run_knows_its_layout_and_finds_itself_from_any_file_inside(trained_run):
    found = Run(trained_run)
    assert found.last_checkpoint.is_file() and found.plan.is_file() and found.test_split.is_file()
    [best] = found.best_checkpoints
    assert found.delivered_checkpoint == best
    assert Run.of(best) == found == Run.of(found.export) == Run.of(trained_run)
    assert Run.of(trained_run.parent) is None
    assert found.execution_plan().precision == json.loads(found.plan.read_text())["precision"]
    assert found.test_records() == json.loads(found.test_split.read_text())
    assert found.read_scores() == {}  # respond=false: no eval.json


def test_load_model_takes_a_run_its_best_checkpoint_with_its_prompt_style(trained_run):
    model, meta = load_model(trained_run)
    assert meta["prompt_style"] == "phi3"
    from_best, _ = load_model(Run(trained_run).delivered_checkpoint)
    for name, tensor in from_best.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0, msg=name)


def test_a_saved_file_without_a_prompt_style_is_an_error_naming_it(trained_run, tiny_export, tmp_path):
    checkpoint = torch.load(Run(trained_run).last_checkpoint, weights_only=True)
    del checkpoint["hyper_parameters"]["prompt_style"]
    torch.save(checkpoint, tmp_path / "styleless.ckpt")
    with pytest.raises(CheckpointMismatchError, match=r"styleless\.ckpt: the checkpoint holds no prompt style"):
        load_model(tmp_path / "styleless.ckpt")
    export = tmp_path / "export"
    export.mkdir()
    (export / "model.safetensors").write_bytes((tiny_export / "model.safetensors").read_bytes())
    config = json.loads((tiny_export / "config.json").read_text())
    del config["prompt_style"]
    (export / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointMismatchError, match=r"export/config\.json: no prompt_style"):
        load_model(export)


def test_chat_model_answers_as_the_batch_answerer_does_and_streams_the_same(tiny_export):
    with ChatModel.load(tiny_export, device="cpu", dtype="float32") as chat:
        expected = answer_batch(chat.model, [{"instruction": "Name a color."}], get_style("alpaca"),
                                SamplingParams(max_new_tokens=8))
        assert chat.generate("Name a color.", max_new_tokens=8) == expected[0]
        assert chat.generate(["Name a color.", "Say hi."], SamplingParams(8))[0] == expected[0]
        streamed = "".join(chat.stream("Name a color.", max_new_tokens=8))
        assert streamed.strip() == expected[0].strip()
        assert chat.chat([{"role": "user", "content": "Name a color."}], max_new_tokens=8) == expected[0].strip()
        seeded = dict(max_new_tokens=8, temperature=1.0, top_k=50, seed=3)
        assert chat.chat("Say hi.", **seeded) == chat.chat("Say hi.", **seeded)
        with pytest.raises(ValueError, match="an assistant turn must follow a user turn"):
            chat.chat([{"role": "assistant", "content": "Hi."}])


def test_a_run_started_from_another_runs_weights_is_named_after_that_run(tmp_path):
    def fake_run(folder, config, experiment):
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "config.yaml").write_text(config)
        (folder / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  runtime:\n    choices:\n      experiment: {experiment}\n")
        return folder

    sft = fake_run(tmp_path / "sft", "model:\n  name: mini\n  weights: null\n", "quickstart")
    dpo = fake_run(tmp_path / "dpo", f"model:\n  name: gpt2-small\n  weights: {sft / 'export'}\n", "dpo-quickstart")
    given = fake_run(tmp_path / "own", "model:\n  name: gpt2-medium\n  weights: /models/gpt2-medium.safetensors\n",
                     "null")
    assert (Run(sft).name, Run(dpo).name, Run(given).name) == ("quickstart-mini", "dpo-quickstart-quickstart-mini",
                                                               "gpt2-medium")
