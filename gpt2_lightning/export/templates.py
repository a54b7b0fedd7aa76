"""A prompt style as the chat templates other engines render: Jinja for Hugging Face
``transformers`` (and llama.cpp), Go ``text/template`` for Ollama.

Both render a list of messages exactly as ``PromptStyle.render`` does: a system message in
the style's system format, each user turn as the style's prompt (ending with the response
header, where the answer starts), each answer followed by the style's turn end unless it is
the last message.

Every literal is written as a quoted string inside a tag, so that the engines' whitespace
trimming around tags never eats a newline of the style.
"""

from __future__ import annotations

import json

from gpt2_lightning.data.prompts import PromptStyle


def _quoted(text: str) -> str:
    """``text`` as a string literal that Jinja and Go both read back unchanged."""
    return json.dumps(text, ensure_ascii=False)


def _literals(style: PromptStyle) -> tuple[str, ...]:
    before_system, _, after_system = style.system_format.partition("{system}")
    return tuple(map(_quoted, (before_system, after_system, style.header, style.response_header, style.turn_end)))


def jinja_chat_template(style: PromptStyle) -> str:
    """The ``chat_template`` for ``tokenizer_config.json`` and GGUF metadata. A conversation
    that ends with a user turn ends where the answer starts, with or without
    ``add_generation_prompt``."""
    before_system, after_system, header, response_header, turn_end = _literals(style)
    return (
        "{%- for message in messages -%}"
        f"{{%- if message['role'] == 'system' -%}}{{{{ {before_system} + message['content'] + {after_system} }}}}"
        f"{{%- elif message['role'] == 'user' -%}}{{{{ {header} + message['content'] + {response_header} }}}}"
        "{%- elif message['role'] == 'assistant' -%}{{ message['content'] }}"
        f"{{%- if not loop.last -%}}{{{{ {turn_end} }}}}{{%- endif -%}}"
        "{%- endif -%}"
        "{%- endfor -%}"
    )


def ollama_template(style: PromptStyle) -> str:
    """The ``TEMPLATE`` of an Ollama ``Modelfile``, rendered over ``.Messages``."""
    before_system, after_system, header, response_header, turn_end = _literals(style)
    return (
        "{{- range $i, $m := .Messages }}"
        f'{{{{- if eq .Role "system" }}}}{{{{ {before_system} }}}}{{{{ .Content }}}}{{{{ {after_system} }}}}'
        f'{{{{- else if eq .Role "user" }}}}{{{{ {header} }}}}{{{{ .Content }}}}{{{{ {response_header} }}}}'
        '{{- else if eq .Role "assistant" }}{{ .Content }}'
        f"{{{{- if gt (len (slice $.Messages $i)) 1 }}}}{{{{ {turn_end} }}}}{{{{- end }}}}"
        "{{- end }}"
        "{{- end }}"
    )
