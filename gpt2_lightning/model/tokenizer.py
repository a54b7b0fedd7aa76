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


@functools.lru_cache(maxsize=1)
def byte_symbols() -> tuple[str, ...]:
    """The printable character that stands for each byte in GPT-2's ``vocab.json`` and
    ``merges.txt`` (OpenAI's ``bytes_to_unicode``): printable Latin-1 bytes stand for
    themselves, the others are shifted past 255."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    shifted = iter(range(256, 512))
    return tuple(chr(byte) if byte in printable else chr(next(shifted)) for byte in range(256))


def _as_symbols(token: bytes) -> str:
    symbols = byte_symbols()
    return "".join(symbols[byte] for byte in token)


@functools.lru_cache(maxsize=1)
def bpe_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The encoding as the ``vocab.json`` (token -> id) and ``merges.txt`` (pairs in merge
    order) that Hugging Face and llama.cpp read, derived from tiktoken's ranks.

    Token ``r`` (after the 256 bytes) is made by merge number ``r - 256``; its two halves
    are what byte-pair encoding of its bytes with the earlier merges alone leaves."""
    enc = get_tokenizer()
    tokens = [enc.decode_single_token_bytes(i) for i in range(EOT_ID)]
    ranks = {token: rank for rank, token in enumerate(tokens)}
    merges = []
    for rank in range(256, EOT_ID):
        parts = [bytes([b]) for b in tokens[rank]]
        while len(parts) > 2:
            pairs = [(ranks.get(a + b, rank), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            best, i = min(pairs)
            if best >= rank:
                raise ValueError(f"token {rank} is not a merge of earlier tokens")
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        merges.append((_as_symbols(parts[0]), _as_symbols(parts[1])))
    vocab = {_as_symbols(token): rank for rank, token in enumerate(tokens)}
    vocab[EOT_TOKEN] = EOT_ID
    return vocab, merges
