"""A prompt style as the chat templates other engines render: Jinja for Hugging Face
``transformers`` (and llama.cpp), Go ``text/template`` for Ollama.

Both render a list of messages exactly as ``PromptStyle.conversation`` does: each user
turn as the style's prompt, each earlier answer followed by a newline, and the response
header where the model's answer starts. A style without turns sees the last user message
alone. System messages have no place in these styles and are left out.

Every literal is written as a quoted string inside a tag, so that the engines' whitespace
trimming around tags never eats a newline of the style.
"""

from __future__ import annotations

import json

from gpt2_lightning.data.prompts import PromptStyle

# What follows an earlier answer before the next turn (see ``PromptStyle.conversation``).
TURN_END = "\n"


def _quoted(text: str) -> str:
    """``text`` as a string literal that Jinja and Go both read back unchanged."""
    return json.dumps(text, ensure_ascii=False)


def jinja_chat_template(style: PromptStyle) -> str:
    """The ``chat_template`` for ``tokenizer_config.json`` and GGUF metadata; with
    ``add_generation_prompt`` it ends where the answer starts."""
    header, response_header, turn_end = map(_quoted, (style.header, style.response_header, TURN_END))
    first_turn = "0" if style.multi_turn else "ns.last_user"
    return (
        "{%- set ns = namespace(last_user=0) -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}"
        "{%- endfor -%}"
        f"{{%- for message in messages[{first_turn}:] -%}}"
        f"{{%- if message['role'] == 'user' -%}}{{{{ {header} + message['content'] }}}}"
        f"{{%- elif message['role'] == 'assistant' -%}}{{{{ {response_header} + message['content'] + {turn_end} }}}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        f"{{%- if add_generation_prompt -%}}{{{{ {response_header} }}}}{{%- endif -%}}"
    )


def ollama_template(style: PromptStyle) -> str:
    """The ``TEMPLATE`` of an Ollama ``Modelfile``. Ollama renders it over ``.Messages`` and
    the model answers after it, so every user turn ends with the response header."""
    header, response_header, turn_end = map(_quoted, (style.header, style.response_header, TURN_END))
    def user_turn(content: str) -> str:
        return f"{{{{ {header} }}}}{{{{ {content} }}}}{{{{ {response_header} }}}}"

    if not style.multi_turn:
        return (
            '{{- $last := "" }}'
            '{{- range .Messages }}{{- if eq .Role "user" }}{{- $last = .Content }}{{- end }}{{- end }}'
            f"{{{{- if $last }}}}{user_turn('$last')}{{{{- end }}}}"
        )
    return (
        "{{- range .Messages }}"
        f'{{{{- if eq .Role "user" }}}}{user_turn(".Content")}'
        f'{{{{- else if eq .Role "assistant" }}}}{{{{ .Content }}}}{{{{ {turn_end} }}}}'
        "{{- end }}"
        "{{- end }}"
    )
