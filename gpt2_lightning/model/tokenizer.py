"""The GPT-2 byte-pair encoding (tiktoken ``gpt2``) and its one special token."""

from __future__ import annotations

import functools
import os

import tiktoken

from gpt2_lightning.errors import TokenizerUnavailableError

EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256
VOCAB_SIZE = 50257



@functools.lru_cache(maxsize=1)
def get_tokenizer() -> tiktoken.Encoding:
    """The ``gpt2`` encoding. tiktoken downloads its two files once into
    ``TIKTOKEN_CACHE_DIR`` (default: a temp dir); offline, point that variable at a
    folder that already holds them."""
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as err:  # tiktoken surfaces requests/urllib errors as they come
        cache = os.environ.get("TIKTOKEN_CACHE_DIR", "<unset>")
        raise TokenizerUnavailableError(
            f"cannot load the GPT-2 tokenizer: its vocabulary is not cached and downloading it failed "
            f"({type(err).__name__}); offline, set TIKTOKEN_CACHE_DIR to a folder holding a filled "
            f"tiktoken cache (now TIKTOKEN_CACHE_DIR={cache})"
        ) from err


def encode(text: str) -> list[int]:
    """Token ids of ``text``; the literal ``<|endoftext|>`` is allowed and maps to 50256."""
    return get_tokenizer().encode(text, allowed_special={EOT_TOKEN})


def decode(ids) -> str:
    return get_tokenizer().decode(list(ids))
