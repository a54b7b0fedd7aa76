"""Preference tuning: preference data, paired batches, sequence log-probabilities, the DPO losses."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpt2_lightning.backends.cpu.loss import token_losses
from gpt2_lightning.data.dataset import IGNORE_INDEX
from gpt2_lightning.data.preference import PreferenceCollator, PreferenceDataset, same_answers
from gpt2_lightning.data.prompts import PROMPT_STYLES
from gpt2_lightning.data.records import FieldNames, load_records, prompt_of, reference_answer
from gpt2_lightning.errors import DataError
from gpt2_lightning.model.gpt import GPTConfig, GPTModel
from gpt2_lightning.model.lora import LoRAConfig, adapters_disabled, add_lora
from gpt2_lightning.model.tokenizer import decode
from gpt2_lightning.train.preference import preference_loss, sequence_logprobs
from tests.conftest import SHARED

ALPACA = {"instruction": "Name a colour.", "input": "", "chosen": "Blue.", "rejected": "Figure it out yourself."}
CONVERSATION = {"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi!"},
                             {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Name a fruit."}],
                "chosen": "An apple.", "rejected": "Ugh. An apple, obviously."}


def write(tmp_path, records, name="prefs.json"):
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records))
    return path


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return GPTModel(GPTConfig(vocab_size=50257, context_length=128, emb_dim=32, n_layers=2, n_heads=2)).eval()


# --- data ---------------------------------------------------------------------------------


def test_the_references_preference_file_reads_as_it_is():
    path = SHARED / "data" / "instruction-data-with-preference.json"
    if not path.is_file():
        pytest.skip("the preference dataset is not beside the repository")
    records = load_records(path)
    assert len(records) == 1100
    assert records[0]["chosen"].startswith("The spelling of the given phrase") and records[0]["input"]
    assert reference_answer(records[1]) == "He goes to the park every day."
    assert same_answers(records) == [123, 227, 401, 567, 629, 677]


@pytest.mark.parametrize("name", ["prefs.json", "prefs.jsonl"])
def test_alpaca_and_conversation_preferences_come_out_canonical(tmp_path, name):
    records = load_records(write(tmp_path, [ALPACA, {**ALPACA, "input": "Any.", "source": "x"}], name))
    assert records[1] == {**ALPACA, "input": "Any.", "source": "x"}
    [conversation] = load_records(write(tmp_path, [CONVERSATION], name))
    assert conversation == CONVERSATION
    style = PROMPT_STYLES["chatml"]
    assert prompt_of(conversation, style) == style.render(CONVERSATION["messages"])
    assert reference_answer(conversation) == "An apple."


def test_trls_preference_formats_read_as_the_canonical_ones(tmp_path):
    explicit_text = {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Figure it out yourself."}
    assert load_records(write(tmp_path, [explicit_text]))[0] == {**ALPACA}
    history = CONVERSATION["messages"]
    explicit = {"prompt": history, "chosen": [{"role": "assistant", "content": "An apple."}],
                "rejected": [{"role": "assistant", "content": "Ugh. An apple, obviously."}]}
    implicit = {"chosen": [*history, {"role": "assistant", "content": "An apple."}],
                "rejected": [*history, {"role": "assistant", "content": "Ugh. An apple, obviously."}]}
    assert load_records(write(tmp_path, [explicit]))[0] == CONVERSATION
    assert load_records(write(tmp_path, [implicit]))[0] == CONVERSATION


def test_data_fields_name_the_answers(tmp_path):
    path = write(tmp_path, [{"question": "Name a colour.", "good": "Blue.", "bad": "No."}])
    [record] = load_records(path, FieldNames(instruction="question", chosen="good", rejected="bad"))
    assert (record["instruction"], record["chosen"], record["rejected"]) == ("Name a colour.", "Blue.", "No.")


@pytest.mark.parametrize("second, message", [
    ({"instruction": "x", "chosen": "a"}, "record 2: missing field 'rejected'"),
    ({"instruction": "x", "chosen": "  ", "rejected": "b"}, "record 2, field 'chosen': the answer is empty"),
    ({"instruction": "x", "chosen": 3, "rejected": "b"}, "record 2, field 'chosen': must be a string or a list"),
    ({"chosen": "a", "rejected": "b"}, "record 2: missing field 'instruction'"),
    ({"instruction": "", "chosen": "a", "rejected": "b"}, "record 2: field 'instruction' is empty"),
    ({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
     "record 2, field 'chosen', turn 1: the answer must be an assistant turn"),
    ({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]},
     "record 2: fields 'chosen' and 'rejected' must hold the same conversation"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "chosen": "a",
      "rejected": "b"}, "record 2: the conversation must end with a user turn"),
    ({"messages": [{"role": "user", "content": ""}], "chosen": "a", "rejected": "b"},
     "record 2, turn 1: field 'content' is empty"),
])
def test_a_bad_preference_names_the_file_the_record_the_turn_and_the_field(tmp_path, second, message):
    path = write(tmp_path, [ALPACA, second])
    with pytest.raises(DataError) as err:
        load_records(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


# --- batches -------------------------------------------------------------------------------


@pytest.mark.parametrize("style", sorted(PROMPT_STYLES))
def test_a_batch_puts_the_chosen_answers_first_and_scores_exactly_each_answer_and_its_end(style):
    records = [ALPACA, CONVERSATION, {**ALPACA, "input": "In French.", "chosen": "Bleu, a longer answer here."}]
    dataset = PreferenceDataset(records, style)
    batch = PreferenceCollator()([dataset[i] for i in range(3)])
    assert batch["input_ids"].shape == batch["targets"].shape and batch["input_ids"].shape[0] == 6
    assert "reference_logps" not in batch
    for row, (record, side) in enumerate([(r, "chosen") for r in records] + [(r, "rejected") for r in records]):
        targets = batch["targets"][row]
        assert decode(targets[targets != IGNORE_INDEX].tolist()) == record[side] + "<|endoftext|>"
        inputs = batch["input_ids"][row][:int((targets != IGNORE_INDEX).nonzero().max()) + 1]
        assert decode(inputs.tolist()) == prompt_of(record, PROMPT_STYLES[style]) + record[side]


def test_fitting_cuts_long_prompts_from_the_left_and_leaves_out_answers_that_cannot_fit():
    long_prompt = {**ALPACA, "input": "word " * 100}
    long_answer = {**ALPACA, "rejected": "no " * 100}
    dataset = PreferenceDataset([ALPACA, long_prompt, long_answer], "alpaca")
    assert dataset.fit(40) == (1, 1)
    assert len(dataset) == 2 and dataset.kept.tolist() == [0, 1]
    batch = PreferenceCollator()([dataset[i] for i in range(2)])
    assert batch["input_ids"].shape[1] <= 40
    for targets, answer in zip(batch["targets"], ["Blue.", "Blue.", "Figure it out yourself."] + ["Figure it out yourself."]):
        assert decode(targets[targets != IGNORE_INDEX].tolist()) == answer + "<|endoftext|>"
    assert dataset.fit(None) == (0, 0) and len(dataset) == 3


def test_the_reference_log_probabilities_travel_with_their_rows():
    dataset = PreferenceDataset([ALPACA, CONVERSATION], "alpaca")
    dataset.reference = np.array([[-1.0, -2.0], [-3.0, -4.0]])
    batch = PreferenceCollator()([dataset[1], dataset[0]])
    assert batch["reference_logps"].tolist() == [-3.0, -1.0, -4.0, -2.0]


# --- log-probabilities and losses ------------------------------------------------------------


def direct_logprobs(model, input_ids, targets, average):
    logprobs = torch.log_softmax(model(input_ids).float(), dim=-1)
    scored = targets != IGNORE_INDEX
    picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * scored
    sums = picked.sum(dim=1)
    return sums / scored.sum(dim=1).clamp(min=1) if average else sums


@pytest.mark.parametrize("style", sorted(PROMPT_STYLES))
@pytest.mark.parametrize("max_length", [None, 48, 30])
def test_sequence_logprobs_equal_a_direct_log_softmax(style, max_length):
    model = tiny_model()
    records = [ALPACA, CONVERSATION, {**ALPACA, "input": "word " * 12}]
    dataset = PreferenceDataset(records, style)
    dataset.fit(max_length)
    batch = PreferenceCollator()([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        for average in (False, True):
            expected = direct_logprobs(model, batch["input_ids"], batch["targets"], average)
            got = sequence_logprobs(model, batch["input_ids"], batch["targets"], average=average)
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)
            fast = sequence_logprobs(model, batch["input_ids"], batch["targets"], average, token_losses=token_losses)
            torch.testing.assert_close(fast, expected, atol=1e-4, rtol=1e-5)


def test_the_cpu_token_losses_have_the_references_gradient():
    torch.manual_seed(1)
    head = torch.nn.Linear(16, 50257, bias=False)
    hidden = torch.randn(7, 16, requires_grad=True)
    targets = torch.randint(0, 50257, (7,))
    weights = torch.randn(7)
    (F.cross_entropy(head(hidden), targets, reduction="none") * weights).sum().backward()
    expected = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None
    (token_losses(head, hidden, targets) * weights).sum().backward()
    torch.testing.assert_close(hidden.grad, expected[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(head.weight.grad, expected[1], atol=1e-5, rtol=1e-4)


def test_a_row_with_nothing_scored_has_log_probability_zero():
    model = tiny_model()
    input_ids = torch.randint(0, 50257, (2, 5))
    targets = torch.full((2, 5), IGNORE_INDEX)
    targets[0, 2:] = torch.tensor([*input_ids[0, 3:].tolist(), 7])
    got = sequence_logprobs(model, input_ids, targets, average=True)
    assert got[1] == 0 and torch.isfinite(got).all() and got[0] < 0


PC, PR, RC, RR = (torch.tensor(v) for v in ([-10.0, -4.0], [-12.0, -3.0], [-11.0, -5.0], [-11.0, -2.0]))


@pytest.mark.parametrize("loss_type, smoothing, formula", [
    ("sigmoid", 0.0, lambda h, b: -F.logsigmoid(b * h)),
    ("sigmoid", 0.2, lambda h, b: -0.8 * F.logsigmoid(b * h) - 0.2 * F.logsigmoid(-b * h)),
    ("robust", 0.2, lambda h, b: (-0.8 * F.logsigmoid(b * h) + 0.2 * F.logsigmoid(-b * h)) / 0.6),
    ("hinge", 0.0, lambda h, b: torch.relu(1 - b * h)),
    ("ipo", 0.0, lambda h, b: (h - 1 / (2 * b)) ** 2),
])
def test_every_loss_type_equals_its_formula(loss_type, smoothing, formula):
    beta = 0.5
    loss, chosen, rejected = preference_loss(PC, PR, RC, RR, beta=beta, loss_type=loss_type, label_smoothing=smoothing)
    h = (PC - PR) - (RC - RR)
    torch.testing.assert_close(loss, formula(h, beta).mean())
    torch.testing.assert_close(chosen, beta * (PC - RC))
    torch.testing.assert_close(rejected, beta * (PR - RR))


def test_simpo_needs_no_reference_and_equals_its_formula():
    loss, chosen, rejected = preference_loss(PC, PR, beta=2.0, loss_type="simpo", gamma=0.5)
    torch.testing.assert_close(loss, -F.logsigmoid(2.0 * (PC - PR) - 0.5).mean())
    torch.testing.assert_close(chosen, 2.0 * PC)
    with pytest.raises(ValueError, match="needs the reference"):
        preference_loss(PC, PR, loss_type="sigmoid")


def test_the_loss_is_ln_2_where_the_policy_is_the_reference():
    loss, chosen, rejected = preference_loss(PC, PR, PC, PR)
    assert loss.item() == pytest.approx(math.log(2)) and chosen.abs().sum() == rejected.abs().sum() == 0


def test_the_lora_reference_with_adapters_off_equals_the_base_exactly():
    base = tiny_model(seed=3)
    adapted = add_lora(tiny_model(seed=3), LoRAConfig(r=4))
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if name.endswith("lora_b"):
                parameter.normal_()
    dataset = PreferenceDataset([ALPACA, CONVERSATION], "alpaca")
    batch = PreferenceCollator()([dataset[0], dataset[1]])
    with torch.no_grad():
        expected = sequence_logprobs(base, batch["input_ids"], batch["targets"])
        with adapters_disabled(adapted):
            got = sequence_logprobs(adapted, batch["input_ids"], batch["targets"])
        adapted_logps = sequence_logprobs(adapted, batch["input_ids"], batch["targets"])
    assert torch.equal(got, expected)
    assert not torch.allclose(adapted_logps, expected)  # the adapters are on again, and they change the answer
