import json

import pytest
import torch

from gpt2_lightning.apps.cli import main
from gpt2_lightning.export.load import load_model
from gpt2_lightning.generation.respond import answer_batch, identity_path, respond
from gpt2_lightning.generation.sampling import SamplingParams
from tests.conftest import REPO_ROOT

RECORDS = json.loads((REPO_ROOT / "data" / "sample.json").read_text())[:7]
FAST = SamplingParams(max_new_tokens=6)


def test_responses_are_the_records_with_model_response(tiny_export, tmp_path):
    model, meta = load_model(tiny_export)
    out = tmp_path / "responses.json"
    answered = respond(model, RECORDS, out, meta["prompt_style"], FAST, progress=False)
    assert json.loads(out.read_text()) == answered
    assert [{k: v for k, v in r.items() if k != "model_response"} for r in answered] == RECORDS
    # Batched answers equal one-by-one answers.
    assert [r["model_response"] for r in answered] == \
        [answer_batch(model, [r], "alpaca", FAST)[0] for r in RECORDS]


def test_an_interrupted_file_is_resumed_without_redoing_finished_records(tiny_export, tmp_path):
    model, _ = load_model(tiny_export)
    out = tmp_path / "responses.json"
    full = respond(model, RECORDS, out, "alpaca", FAST, progress=False)
    # An earlier run was stopped after 3 records; mark them so a redo would show.
    out.write_text(json.dumps([{**r, "model_response": f"kept {i}"} for i, r in enumerate(full[:3])]))
    resumed = respond(model, RECORDS, out, "alpaca", FAST, progress=False)
    assert [r["model_response"] for r in resumed[:3]] == ["kept 0", "kept 1", "kept 2"]
    assert resumed[3:] == full[3:]
    # A file for other records is not mistaken for progress.
    other = [{**r, "instruction": r["instruction"] + "?"} for r in RECORDS]
    assert respond(model, other, out, "alpaca", FAST, progress=False)[0]["model_response"] != "kept 0"


def test_a_resumed_file_samples_what_an_uninterrupted_one_would(tiny_export, tmp_path):
    model, _ = load_model(tiny_export)
    sampling = SamplingParams(max_new_tokens=6, temperature=1.0, top_k=50, seed=7)
    out = tmp_path / "responses.json"
    whole = respond(model, RECORDS, out, "alpaca", sampling, batch_size=3, progress=False)
    out.write_text(json.dumps(whole[:3]))  # stopped after the first batch
    assert respond(model, RECORDS, out, "alpaca", sampling, batch_size=2, progress=False) == whole
    assert len({r["model_response"] for r in whole}) > 1


def test_answers_of_other_weights_settings_or_an_unknown_origin_are_never_reused(tiny_export, tmp_path):
    model, _ = load_model(tiny_export)
    out = tmp_path / "responses.json"
    marked = [{**r, "model_response": f"kept {i}"} for i, r in enumerate(RECORDS)]

    def reused(*args, forget_origin=False):
        """Answer with the base identity, mark the answers, then answer with ``args``."""
        respond(model, RECORDS, out, "alpaca", FAST, progress=False)
        out.write_text(json.dumps(marked))
        if forget_origin:
            identity_path(out).unlink()
        return "kept 0" in [r["model_response"] for r in respond(*args, progress=False)]

    other_weights, _ = load_model(tiny_export)
    with torch.no_grad():
        other_weights.final_norm.bias.add_(0.5)
    assert reused(model, RECORDS, out, "alpaca", FAST)
    assert not reused(other_weights, RECORDS, out, "alpaca", FAST)
    assert not reused(model, RECORDS, out, "alpaca", SamplingParams(max_new_tokens=7))
    assert not reused(model, RECORDS, out, "phi3", FAST)
    assert not reused(model, RECORDS, out, "alpaca", FAST, forget_origin=True)
    assert not reused(model, RECORDS, out, "alpaca", FAST.with_(stop=("\n",)))
    assert reused(model, RECORDS, out, "alpaca", FAST, 5)  # another batch size gives the same answers
    fresh = respond(other_weights, RECORDS, tmp_path / "fresh.json", "alpaca", FAST, progress=False)
    respond(model, RECORDS, out, "alpaca", FAST, progress=False)
    assert respond(other_weights, RECORDS, out, "alpaca", FAST, progress=False) == fresh


def test_command_answers_custom_instructions_from_a_text_file(tiny_export, tmp_path, capsys):
    instructions = tmp_path / "mine.txt"
    instructions.write_text("Name a color.\n\nWrite a haiku about the sea.\n")
    main(["respond", str(tiny_export), "--records", str(instructions), "--max-new-tokens", "5", "--dtype", "float32"])
    answered = json.loads((tmp_path / "mine-responses.json").read_text())
    assert [r["instruction"] for r in answered] == ["Name a color.", "Write a haiku about the sea."]
    assert "2 responses in" in capsys.readouterr().out


def test_command_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["respond", str(tmp_path), "--records", str(tmp_path / "missing.txt")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing.txt'}: no such file"
