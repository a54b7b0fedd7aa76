import pytest

from gpt2_lightning.data.prompts import extract_response, format_example, format_prompt, get_style

WITH_INPUT = {"instruction": "Rewrite the sentence in passive voice.", "input": "The dog chased the ball.",
              "output": "The ball was chased by the dog."}
NO_INPUT = {"instruction": "Name a primary color.", "input": "", "output": "Red."}


def test_alpaca_prompt_matches_the_stanford_template():
    assert format_prompt(WITH_INPUT) == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nRewrite the sentence in passive voice."
        "\n\n### Input:\nThe dog chased the ball.\n\n### Response:\n")
    assert format_example(NO_INPUT) == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nName a primary color.\n\n### Response:\nRed.")


def test_phi3_prompt():
    assert format_example(WITH_INPUT, "phi3") == (
        "<|user|>\nRewrite the sentence in passive voice.\nThe dog chased the ball.\n\n"
        "<|assistant|>\nThe ball was chased by the dog.")


@pytest.mark.parametrize("style", ["alpaca", "phi3"])
def test_extract_response_drops_prompt_header_and_next_turn(style):
    generated = format_example(WITH_INPUT, style)
    assert extract_response(generated, style) == WITH_INPUT["output"]
    next_turn = {"alpaca": "\n\n### Instruction:\nmore", "phi3": "\n<|user|>\nmore"}[style]
    assert extract_response(generated + next_turn, style) == WITH_INPUT["output"]
    assert extract_response("  just an answer<|endoftext|>junk", style) == "just an answer"


def test_unknown_style_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown prompt style 'vicuna'; choose one of alpaca, phi3, chatml"):
        format_prompt(NO_INPUT, "vicuna")


def test_conversations_render_system_turns_and_turn_ends_per_style():
    history = [("Hi", "Hello!")]
    alpaca = get_style("alpaca")
    assert alpaca.conversation(history, "Bye") == \
        format_prompt({"instruction": "Hi"}) + "Hello!<|endoftext|>" + format_prompt({"instruction": "Bye"})
    assert get_style("phi3").conversation(history, "Bye", system="Be brief.") == \
        "<|system|>\nBe brief.<|end|>\n<|user|>\nHi\n\n<|assistant|>\nHello!<|end|>\n<|user|>\nBye\n\n<|assistant|>\n"
    assert get_style("chatml").conversation(history, "Bye") == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n" \
        "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
    # A single-turn conversation is exactly the Alpaca record's prompt and response.
    messages = [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Red."}]
    assert alpaca.render(messages) == format_example({"instruction": "Name a color.", "output": "Red."})


MADE_UP_TURN = {"alpaca": "Red.\n\n### Instruction:\nName another.\n\n### Response:\nBlue.",
                "phi3": "Red.\n<|user|>\nName another.\n\n<|assistant|>\nBlue."}


@pytest.mark.parametrize("style", ["alpaca", "phi3"])
def test_a_made_up_later_turn_is_cut_off_not_extracted(style):
    assert get_style(style).answer(MADE_UP_TURN[style]) == "Red."
    assert extract_response(format_prompt(NO_INPUT, style) + MADE_UP_TURN[style], style) == "Red."
    assert extract_response(MADE_UP_TURN[style], style) == "Red."


@pytest.mark.parametrize("style", ["alpaca", "phi3"])
def test_respond_answers_with_the_text_before_a_made_up_turn(style, tmp_path):
    from gpt2_lightning.generation.respond import respond
    from gpt2_lightning.generation.sampling import SamplingParams
    from gpt2_lightning.model.tokenizer import encode
    from tests.scripted_model import scripted_answer

    record = {"instruction": NO_INPUT["instruction"], "input": "", "output": "Red."}
    model = scripted_answer(encode(format_prompt(record, style)), encode(MADE_UP_TURN[style]))
    [answered] = respond(model, [record], tmp_path / "responses.json", style,
                         SamplingParams(max_new_tokens=40), progress=False)
    assert answered["model_response"] == "Red."
