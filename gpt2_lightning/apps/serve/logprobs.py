"""Log-probabilities in OpenAI's two shapes: chat's ``logprobs.content`` and the legacy
completions' ``tokens`` / ``token_logprobs`` / ``top_logprobs`` / ``text_offset``."""

from __future__ import annotations

from collections.abc import Sequence

from gpt2_lightning.evaluate.likelihood import TokenScores
from gpt2_lightning.model.tokenizer import get_tokenizer


def token_bytes(token: int) -> bytes:
    return get_tokenizer().decode_single_token_bytes(token)


def token_text(token: int) -> str:
    """A token as text; a token that ends inside a character shows U+FFFD (its ``bytes`` are exact)."""
    return token_bytes(token).decode("utf-8", errors="replace")


class ChoiceLogprobs:
    """The log-probabilities of a run of tokens of one choice, its text starting at ``offset``."""

    def __init__(self, offset: int = 0):
        self.offset = offset
        self.tokens: list[int] = []
        self.logprobs: list[float | None] = []
        self.top: list[Sequence[tuple[int, float]] | None] = []
        self.offsets: list[int] = []

    def add(self, token: int, logprob: float | None, top: Sequence[tuple[int, float]] | None,
            text: bool = True) -> None:
        """``text``: the token's text is in the choice's (not so for the end-of-text token)."""
        self.tokens.append(token)
        self.logprobs.append(logprob)
        self.top.append(top)
        self.offsets.append(self.offset)
        if text:
            self.offset += len(token_text(token))

    def add_prompt(self, ids: Sequence[int], scores: TokenScores | None) -> None:
        """An echoed prompt: its first token has no log-probability (nothing comes before it)."""
        for i, token in enumerate(ids):
            scored = scores is not None and i >= 1
            self.add(token, scores.logprobs[i - 1] if scored else None, scores.top[i - 1] if scored else None)

    def chat(self) -> dict:
        def entry(token: int, logprob: float) -> dict:
            return {"token": token_text(token), "logprob": logprob, "bytes": list(token_bytes(token))}

        return {"content": [{**entry(token, logprob), "top_logprobs": [entry(t, lp) for t, lp in top or ()]}
                            for token, logprob, top in zip(self.tokens, self.logprobs, self.top)]}

    def legacy(self) -> dict:
        return {"tokens": [token_text(t) for t in self.tokens], "token_logprobs": self.logprobs,
                "top_logprobs": [None if top is None else {token_text(t): lp for t, lp in top} for top in self.top],
                "text_offset": self.offsets}
