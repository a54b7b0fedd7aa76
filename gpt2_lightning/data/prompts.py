"""Prompt styles: how a record becomes prompt text and response text, and back.

A style renders the prompt (everything the model is given, ending where the answer
starts) and the response (what it should produce) separately, so the prompt's tokens can
be masked out of the loss and generation can start exactly where the answer begins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gpt2_lightning.errors import ConfigError
from gpt2_lightning.model.tokenizer import EOT_TOKEN


@dataclass(frozen=True)
class PromptStyle:
    name: str
    header: str
    """Text before the instruction (a user turn)."""
    input_prefix: str
    """Text before the optional ``input`` (omitted with it when the input is empty)."""
    response_header: str
    """Text that ends the prompt; the answer follows it."""
    stop_strings: tuple[str, ...]
    """Generated text is cut at the first of these (the model starting a new turn)."""
    turn_end: str = EOT_TOKEN
    """What closes an answer that more turns follow (the last answer of a training example
    ends with ``<|endoftext|>``)."""
    system_format: str = "{system}\n\n"
    """How a system message is written, ``{system}`` standing for its text."""

    def prompt(self, record: Mapping[str, str]) -> str:
        extra = f"{self.input_prefix}{record['input']}" if record.get("input") else ""
        return f"{self.header}{record['instruction']}{extra}{self.response_header}"

    def response(self, record: Mapping[str, str]) -> str:
        return record["output"]

    def segments(self, messages: Sequence[Mapping[str, str]]) -> list[tuple[str, bool]]:
        """A conversation (``role`` system / user / assistant, ``content``; checked by
        ``records.check_messages``) as text pieces, each with whether it is the model's own
        (an answer and the end of its turn). The last answer, if the conversation ends with
        one, is left open: a training example closes it with ``<|endoftext|>``."""
        pieces = []
        for index, message in enumerate(messages):
            role, content = message["role"], message["content"]
            if role == "system":
                pieces.append((self.system_format.format(system=content), False))
            elif role == "user":
                pieces.append((self.prompt({"instruction": content}), False))
            else:
                pieces.append((content, True))
                if index < len(messages) - 1:
                    pieces.append((self.turn_end, True))
        return pieces

    def render(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The text of a conversation; one that ends with a user turn ends where the answer starts."""
        return "".join(text for text, _ in self.segments(messages))

    def conversation(self, history: Sequence[tuple[str, str]], instruction: str, system: str | None = None) -> str:
        """The prompt for ``instruction`` after the ``(instruction, answer)`` turns of ``history``."""
        messages = [{"role": "system", "content": system}] if system else []
        for question, answer in history:
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return self.render([*messages, {"role": "user", "content": instruction}])

    def answer(self, generated: str) -> str:
        """The answer in text generated after a prompt: up to the first stop string (where
        the model starts a turn of its own), stripped. A response header in generated text
        belongs to such a made-up turn, so it is never looked for here."""
        return cut_at_stop(generated, self.stop_strings)[0].strip()

    def extract(self, text: str) -> str:
        """The answer in ``text`` that starts with a prompt of this style and goes on with the
        generation (what ``generate`` returns, decoded): what follows the prompt's response
        header, up to the first stop string. Other text is taken as the generation alone."""
        marker = self.response_header.strip()
        if text.lstrip().startswith(self.header.strip()) and marker in text:
            text = text.split(marker, 1)[1]
        return self.answer(text)


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first of ``stops`` it contains, and whether it contained one."""
    cuts = [text.find(stop) for stop in stops if stop and stop in text]
    return (text[:min(cuts)], True) if cuts else (text, False)


PROMPT_STYLES: dict[str, PromptStyle] = {
    # Stanford Alpaca's template, as used by the reference fine-tune.
    "alpaca": PromptStyle(
        name="alpaca",
        header="Below is an instruction that describes a task. Write a response that "
               "appropriately completes the request.\n\n### Instruction:\n",
        input_prefix="\n\n### Input:\n",
        response_header="\n\n### Response:\n",
        stop_strings=("### Instruction:", "### Input:", "### Response:", EOT_TOKEN),
    ),
    # Microsoft Phi-3's chat turns.
    "phi3": PromptStyle(
        name="phi3",
        header="<|user|>\n",
        input_prefix="\n",
        response_header="\n\n<|assistant|>\n",
        stop_strings=("<|user|>", "<|assistant|>", "<|end|>", EOT_TOKEN),
        turn_end="<|end|>\n",
        system_format="<|system|>\n{system}<|end|>\n",
    ),
    # ChatML (OpenAI's chat markup), written as plain text: GPT-2 has no tokens for its markers.
    "chatml": PromptStyle(
        name="chatml",
        header="<|im_start|>user\n",
        input_prefix="\n\n",
        response_header="<|im_end|>\n<|im_start|>assistant\n",
        stop_strings=("<|im_end|>", "<|im_start|>", EOT_TOKEN),
        turn_end="<|im_end|>\n",
        system_format="<|im_start|>system\n{system}<|im_end|>\n",
    ),
}


# The style of the reference fine-tune: what training uses unless told, and what plain GPT-2
# weights (which carry no style of their own) are prompted with.
DEFAULT_STYLE = "alpaca"


def get_style(style: str | PromptStyle) -> PromptStyle:
    if isinstance(style, PromptStyle):
        return style
    try:
        return PROMPT_STYLES[style]
    except KeyError:
        raise ConfigError(f"unknown prompt style {style!r}; choose one of {', '.join(PROMPT_STYLES)}") from None


def format_prompt(record: Mapping[str, str], style: str | PromptStyle = DEFAULT_STYLE) -> str:
    """The prompt text of ``record`` (instruction, optional input, response header)."""
    return get_style(style).prompt(record)


def format_example(record: Mapping[str, str], style: str | PromptStyle = DEFAULT_STYLE) -> str:
    """Prompt and response as one training text."""
    style = get_style(style)
    return style.prompt(record) + style.response(record)


def extract_response(text: str, style: str | PromptStyle = DEFAULT_STYLE) -> str:
    """The model's answer in ``text``, the prompt followed by the generation (see ``PromptStyle.extract``)."""
    return get_style(style).extract(text)
