"""Structured output: an answer held to a JSON schema by grammar-constrained decoding. At each
step the tokens that cannot continue valid JSON of the schema are masked out of the row's
logits, so a constrained row and free rows decode in the same batch. The grammar engine is
xgrammar (the ``structured`` extra), whose JSON grammars allow no free whitespace: an answer
cannot run on in blank space."""

from __future__ import annotations

import functools
import json

import torch

from gpt2_lightning.errors import ConfigError
from gpt2_lightning.model.tokenizer import EOT_ID, get_tokenizer

INSTALL_HINT = "structured output needs xgrammar: pip install 'gpt2-lightning[structured]'"


def _xgrammar():
    try:
        import xgrammar
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return xgrammar


@functools.lru_cache(maxsize=1)
def _compiler():
    """The grammar compiler over GPT-2's vocabulary (its tokens as raw bytes), built once."""
    xgr = _xgrammar()
    enc = get_tokenizer()
    vocab = [enc.decode_single_token_bytes(i) for i in range(enc.n_vocab)]
    info = xgr.TokenizerInfo(vocab, vocab_type=xgr.VocabType.RAW, vocab_size=enc.n_vocab, stop_token_ids=[EOT_ID])
    return xgr.GrammarCompiler(info, max_threads=1)


@functools.lru_cache(maxsize=64)
def _compiled(schema: str | None):
    compiler = _compiler()
    return compiler.compile_json_schema(schema or '{"type": "object"}', any_whitespace=False)


class JsonConstraint:
    """One answer's JSON grammar: ``mask`` the logits before each token is chosen, ``accept`` the
    token chosen. Once the JSON is complete, only end-of-text remains allowed."""

    def __init__(self, schema: dict | None = None):
        """``schema``: a JSON schema; None: any JSON object."""
        xgr = _xgrammar()
        try:
            compiled = _compiled(None if schema is None else json.dumps(schema, sort_keys=True))
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"the JSON schema cannot be used: {err}") from None
        self._matcher = xgr.GrammarMatcher(compiled)
        self._bitmask = xgr.allocate_token_bitmask(1, compiled.tokenizer_info.vocab_size)
        self._apply = xgr.apply_token_bitmask_inplace

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits [1, vocab]`` (float32, on the CPU or GPU) with the disallowed tokens at -inf."""
        logits = logits.float().clone()
        self._matcher.fill_next_token_bitmask(self._bitmask)
        self._apply(logits, self._bitmask.to(logits.device))
        return logits

    def accept(self, token: int) -> None:
        if token != EOT_ID:
            self._matcher.accept_token(token)
