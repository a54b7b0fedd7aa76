"""Multi-turn conversation data: formats, validation, per-turn loss masks, token cache,
answering a conversation's last turn."""

from __future__ import annotations

import json

import pytest
import torch

from gpt2_lightning.data.datamodule import InstructionDataModule
from gpt2_lightning.data.dataset import InstructionCollator, InstructionDataset
from gpt2_lightning.data.prompts import PROMPT_STYLES, get_style
from gpt2_lightning.data.records import load_records
from gpt2_lightning.errors import DataError
from gpt2_lightning.model.tokenizer import EOT_ID, encode

CONVERSATION = [
    {"role": "system", "content": "You answer in one word."},
    {"role": "user", "content": "Name a primary color."},
    {"role": "assistant", "content": "Red."},
    {"role": "user", "content": "And another one?"},
    {"role": "assistant", "content": "Blue, of course."},
]
SHAREGPT = [{"from": {"system": "system", "user": "human", "assistant": "gpt"}[m["role"]], "value": m["content"]}
            for m in CONVERSATION]


def write(path, records, jsonl=False):
    path.write_text("\n".join(json.dumps(r) for r in records) if jsonl else json.dumps(records))
    return path


@pytest.mark.parametrize("jsonl", [False, True], ids=["json", "jsonl"])
def test_messages_and_sharegpt_files_read_as_the_same_conversations(tmp_path, jsonl):
    suffix = ".jsonl" if jsonl else ".json"
    messages = load_records(write(tmp_path / f"m{suffix}", [{"messages": CONVERSATION, "id": 7}], jsonl))
    sharegpt = load_records(write(tmp_path / f"s{suffix}", [{"conversations": SHAREGPT, "id": 7}], jsonl))
    assert messages == sharegpt == [{"messages": CONVERSATION, "id": 7}]
    assert load_records(tmp_path / f"s{suffix}", fmt="sharegpt") == sharegpt


@pytest.mark.parametrize("turns, message", [
    ([{"role": "user"}], "record 1, turn 1: missing field 'content'"),
    ([{"role": "robot", "content": "x"}], "record 1, turn 1: field 'role' is 'robot'; use one of system, user, assistant"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
     "record 1, turn 2: a user turn must follow the answer to the previous one (field 'role')"),
    ([{"role": "assistant", "content": "a"}], "record 1, turn 1: an assistant turn must follow a user turn (field 'role')"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "  "}], "record 1, turn 2: field 'content' is empty"),
    ([], "record 1: the conversation is empty"),
    ([{"role": "user", "content": "a"}], "record 1: the conversation must end with an assistant turn"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "b"}],
     "record 1, turn 2: a system message must come before the conversation's turns"),
])
def test_bad_conversations_name_the_file_record_turn_and_field(tmp_path, turns, message):
    path = write(tmp_path / "bad.json", [{"messages": turns}])
    with pytest.raises(DataError) as err:
        load_records(path)
    assert str(err.value) == f"{path}: {message}"


def test_sharegpt_errors_name_its_own_fields(tmp_path):
    path = write(tmp_path / "bad.json", [{"conversations": [{"from": "human", "value": "a"}, {"from": "bot", "value": "b"}]}])
    with pytest.raises(DataError, match=r"record 1, turn 2: field 'from' is 'bot'; use one of system, human, user, gpt"):
        load_records(path)


def scored_tokens(ids, scored):
    return [int(t) for t, s in zip(ids, scored) if s]


@pytest.mark.parametrize("style", list(PROMPT_STYLES))
def test_only_the_answers_and_their_turn_ends_are_scored(style):
    style_ = get_style(style)
    ids, scored = InstructionDataset([{"messages": CONVERSATION}], style)[0]
    # Each prompt is tokenised as it is when the model answers it; each answer with its turn end.
    first, second = encode(style_.render(CONVERSATION[:2])), encode(style_.render(CONVERSATION[3:4]))
    red, blue = encode("Red." + style_.turn_end), encode("Blue, of course.")
    assert ids.tolist() == first + red + second + blue + [EOT_ID]
    assert scored_tokens(ids, scored) == red + blue + [EOT_ID]
    everything = InstructionDataset([{"messages": CONVERSATION}], style, train_on="all")[0]
    assert everything[1].all()


@pytest.mark.parametrize("max_length", [None, 30, 45, 60])
def test_targets_are_exactly_the_answer_tokens_across_truncation(max_length):
    dataset = InstructionDataset([{"messages": CONVERSATION}, {"messages": CONVERSATION[1:3]}], "chatml")
    batch = InstructionCollator(max_length)([dataset[0], dataset[1]])
    for row, (ids, scored) in enumerate([dataset[0], dataset[1]]):
        width = batch["input_ids"].shape[1]
        expected = [int(ids[t + 1]) if scored[t + 1] else -100 for t in range(min(width, len(ids) - 1))]
        assert batch["targets"][row, :len(expected)].tolist() == expected
        assert (batch["targets"][row, len(expected):] == -100).all()
        assert batch["input_ids"][row, :len(expected)].tolist() == ids[:len(expected)].tolist()


def test_the_datamodule_caches_tokens_by_content_and_settings(tmp_path):
    data = write(tmp_path / "chats.jsonl", [{"messages": CONVERSATION}] * 20, jsonl=True)
    cache = tmp_path / "tokens"

    def setup(**kwargs):
        dm = InstructionDataModule(path=str(data), prompt_style="chatml", token_cache_dir=str(cache), **kwargs)
        dm.setup()
        return dm

    first = setup()
    assert len(list(cache.iterdir())) == 1
    again = setup()
    assert torch.equal(torch.from_numpy(first.datasets["train"].ids.astype("int64")),
                       torch.from_numpy(again.datasets["train"].ids.astype("int64")))
    setup(train_on="all")  # other settings: other tokens
    write(data, [{"messages": CONVERSATION[:3]}] * 20, jsonl=True)  # other content: other tokens
    changed = setup()
    assert len(list(cache.iterdir())) == 3 and len(changed.datasets["train"].ids) < len(first.datasets["train"].ids)


def test_respond_answers_a_conversations_last_turn_and_scores_it(tmp_path, tiny_export):
    from gpt2_lightning.evaluate.scores import score_responses
    from gpt2_lightning.export.load import load_model
    from gpt2_lightning.generation.respond import respond
    from gpt2_lightning.generation.sampling import SamplingParams
    from tests.scripted_model import scripted_answer

    style = get_style("chatml")
    prompt = encode(style.render(CONVERSATION[:-1]))
    model = scripted_answer(prompt, encode("Blue, of course."))
    answered = respond(model, [{"messages": CONVERSATION}], tmp_path / "responses.json", style,
                       SamplingParams(max_new_tokens=10), progress=False)
    assert answered == [{"messages": CONVERSATION, "model_response": "Blue, of course."}]
    assert score_responses(answered)["exact_match"] == 1.0
    assert json.loads((tmp_path / "responses.json").read_text()) == answered
    assert load_model(tiny_export)  # the fixture's model is unused: the scripted one answers


def test_a_run_on_conversations_trains_answers_and_scores_the_test_split(tmp_path):
    from gpt2_lightning.apps.job import run
    from tests.conftest import TINY_RUN, compose_train

    data = write(tmp_path / "chats.json", [{"conversations": SHAREGPT}] * 30)
    run(compose_train(tmp_path / "run", *TINY_RUN, f"data.path={data}", "data.prompt_style=chatml",
                      "trainer.max_steps=3", "test=true", "respond=true", "generation.max_new_tokens=4",
                      f"data.token_cache_dir={tmp_path / 'tokens'}"))
    responses = json.loads((tmp_path / "run" / "responses.json").read_text())
    assert len(responses) == 3 and all(r["messages"] == CONVERSATION and "model_response" in r for r in responses)
    scores = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert scores["n"] == 3 and "test_loss" in scores


# --- other files and the hub, through the datasets library -------------------------------------

def test_csv_parquet_and_saved_dataset_folders_read_with_the_field_mapping(tmp_path):
    datasets = pytest.importorskip("datasets")
    from gpt2_lightning.data.records import FieldNames

    rows = [{"prompt": "Name a color.", "completion": "Red."}, {"prompt": "Name a fruit.", "completion": "A pear."}]
    table = datasets.Dataset.from_list(rows)
    table.to_csv(tmp_path / "data.csv", index=False)
    table.to_parquet(tmp_path / "data.parquet")
    datasets.DatasetDict({"train": table, "test": table.select([1])}).save_to_disk(tmp_path / "saved")
    fields = FieldNames(instruction="prompt", output="completion")
    expected = [{"instruction": r["prompt"], "input": "", "output": r["completion"]} for r in rows]
    assert load_records(tmp_path / "data.csv", fields) == load_records(tmp_path / "data.parquet", fields) == expected
    assert load_records(tmp_path / "saved", fields, hf_split="test") == expected[1:]
    with pytest.raises(DataError, match=r"saved: no split 'dev'; it has train, test \(data.hf_split\)"):
        load_records(tmp_path / "saved", fields, hf_split="dev")
    with pytest.raises(DataError, match=r"record 1: missing field 'instruction'; its fields suggest "
                                        r"data.fields.instruction=prompt data.fields.output=completion"):
        load_records(tmp_path / "data.csv")


def test_parquet_conversations_read_like_json_ones(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list([{"messages": CONVERSATION}]).to_parquet(tmp_path / "chats.parquet")
    assert load_records(tmp_path / "chats.parquet") == [{"messages": CONVERSATION}]


def test_an_unreachable_hub_is_one_clear_line_at_once(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    import time

    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1")  # nothing listens on port 443 here
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.monotonic()
    with pytest.raises(DataError, match=r"^hf://someone/data: the Hugging Face hub \(127.0.0.1\) cannot be reached"):
        load_records("hf://someone/data")
    assert time.monotonic() - start < 5
