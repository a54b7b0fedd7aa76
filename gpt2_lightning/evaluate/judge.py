"""LLM-as-judge: a larger model scores each response 0-100, as the reference does with a
local Llama 3. Talks to an Ollama server (``/api/chat``) or any OpenAI-compatible one
(``/v1/chat/completions``)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import requests

from gpt2_lightning.data.prompts import get_style
from gpt2_lightning.data.records import prompt_of, reference_answer
from gpt2_lightning.errors import ConfigError, JudgeError


def judge_prompt(record: dict) -> str:
    """The reference's scoring instruction."""
    alpaca = get_style("alpaca")
    instruction = prompt_of(record, alpaca).removesuffix(alpaca.response_header)
    return (f"Given the input `{instruction}` "
            f"and correct output `{reference_answer(record)}`, score the model response "
            f"`{record['model_response']}` on a scale from 0 to 100, where 100 is the best score. "
            f"Respond with the integer number only.")


def parse_score(text: str) -> int | None:
    match = re.search(r"\d+", text)
    return min(100, int(match.group())) if match else None


class Judge:
    def __init__(self, url: str, model: str = "llama3", api: str = "auto", timeout: float = 120.0):
        self.url = url.rstrip("/")
        self.model = model
        if api == "auto":
            api = "openai" if self.url.endswith("/v1") else "ollama"
        if api not in ("ollama", "openai"):
            raise ConfigError(f"judge api must be 'ollama', 'openai' or 'auto', got {api!r}")
        self.api = api
        self.timeout = timeout

    def ask(self, prompt: str) -> str:
        messages = [{"role": "user", "content": prompt}]
        if self.api == "ollama":
            endpoint = f"{self.url}/api/chat"
            body = {"model": self.model, "messages": messages, "stream": False,
                    "options": {"seed": 123, "temperature": 0, "num_ctx": 2048}}
        else:
            endpoint = f"{self.url}/chat/completions"
            body = {"model": self.model, "messages": messages, "temperature": 0, "seed": 123}
        try:
            response = requests.post(endpoint, json=body, timeout=self.timeout)
        except requests.RequestException as err:
            raise JudgeError(f"no LLM judge answers at {endpoint} ({type(err).__name__}); start one "
                             f"(e.g. `ollama serve` and `ollama pull {self.model}`) or give another URL") from None
        if response.status_code != 200:
            raise JudgeError(f"the LLM judge at {endpoint} answered HTTP {response.status_code}: "
                             f"{response.text[:200]}")
        try:
            data = response.json()
            return data["message"]["content"] if self.api == "ollama" else data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise JudgeError(f"the LLM judge at {endpoint} answered in an unknown format: "
                             f"{response.text[:200]}") from None

    def score(self, records: Sequence[dict]) -> list[int | None]:
        return [parse_score(self.ask(judge_prompt(record))) for record in records]
