"""The model behind the server: one ``BatchEngine`` that every request decodes on, and the
scoring of prompts for ``echo``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from fastapi import Request

from gpt2_lightning.apps.serve.metrics import Metrics
from gpt2_lightning.apps.serve.schemas import APIError, Message, SamplingRequest
from gpt2_lightning.data.prompts import PromptStyle
from gpt2_lightning.data.records import chat_prompt
from gpt2_lightning.errors import ConfigError, DataError
from gpt2_lightning.evaluate.likelihood import TokenScores, score_tokens
from gpt2_lightning.generation.constraint import JsonConstraint
from gpt2_lightning.generation.engine import BatchEngine, Generation, QueueFull
from gpt2_lightning.generation.prefix_cache import DEFAULT_MEGABYTES
from gpt2_lightning.generation.stream import GenerationFailed, TextStream, generation_for
from gpt2_lightning.model.gpt import GPTModel
from gpt2_lightning.model.tokenizer import encode

DISCONNECT_POLL = 0.5  # seconds between checks that a client is still there


@dataclass
class Answer:
    """A request's answer under way: its text so far, its sequence in the engine, and the
    tokens the engine has sent it."""

    stream: TextStream
    seq: Generation
    arrived: asyncio.Queue


class ServedModel:
    """A model served under ``name``: requests decode together on its engine, joining the
    running batch as rows free up; those that find the queue full get a 429."""

    def __init__(self, model: GPTModel, style: PromptStyle, name: str, default_max_tokens: int = 256,
                 max_batch_size: int = 8, max_queue: int = 64, request_timeout: float | None = 600.0,
                 prefix_cache_mb: float = DEFAULT_MEGABYTES):
        self.model = model.eval()
        self.style = style
        self.name = name
        self.default_max_tokens = default_max_tokens
        self.request_timeout = request_timeout
        self.engine = BatchEngine(model, max_batch_size=max_batch_size, max_queue=max_queue,
                                  prefix_cache_mb=prefix_cache_mb)
        self.metrics = Metrics(self.engine)
        self.served = 0

    @property
    def context_length(self) -> int:
        return self.model.cfg.context_length

    def check_model(self, request: SamplingRequest) -> None:
        if request.model is not None and request.model != self.name:
            raise APIError(404, f"the model '{request.model}' does not exist; this server has '{self.name}'",
                           "model", "model_not_found")

    async def chat_prompt_ids(self, messages: list[Message], check_length: bool = True) -> list[int]:
        """The tokens of a chat request's prompt: its conversation in the model's prompt style
        (rendered and tokenised off the event loop); ``check_length``: a 400 unless an answer fits after it."""
        turns = [{"role": m.role, "content": m.text} for m in messages]
        try:
            text = await asyncio.to_thread(chat_prompt, turns, self.style, empty_answers=True)
        except DataError as err:
            raise APIError(400, str(err), "messages") from None
        ids = await asyncio.to_thread(encode, text)
        return self.fitting(ids, "messages") if check_length else ids

    async def prompt_ids(self, prompt: str | list[int], check_length: bool = True) -> list[int]:
        """The tokens of a completion prompt, given as text (tokenised off the event loop) or as ids."""
        if isinstance(prompt, str):
            ids = await asyncio.to_thread(encode, prompt)
            return self.fitting(ids, "prompt") if check_length else ids
        self.check_token_ids(prompt, "prompt")
        return self.fitting(list(prompt), "prompt") if check_length else list(prompt)

    def check_token_ids(self, ids: Sequence[int], param: str) -> None:
        """A 400 naming the first of ``ids`` that is not in the vocabulary."""
        vocab = self.model.cfg.vocab_size
        bad = next((i for i, token in enumerate(ids) if token >= vocab), None)
        if bad is not None:
            raise APIError(400, f"{param}: token {ids[bad]} at position {bad} is not in the vocabulary "
                           f"(ids 0 to {vocab - 1})", param)

    def fitting(self, ids: list[int], param: str) -> list[int]:
        if len(ids) >= self.context_length:
            raise APIError(400, f"{param}: the prompt is {len(ids)} tokens; this model's context is "
                           f"{self.context_length} tokens, and the answer needs at least one", param)
        return ids

    async def answers(self, ids: list[int], request: SamplingRequest, chat: bool, n: int) -> list[Answer]:
        """``n`` answers to the prompt ``ids``, queued in the engine together; a 429 (and none
        of them left queued) when the queue is full."""
        params = request.sampling_params(self.default_max_tokens, self.context_length - len(ids))
        if any(token >= self.model.cfg.vocab_size for token, _ in params.logit_bias):
            raise APIError(400, f"logit_bias: token ids must be below {self.model.cfg.vocab_size}", "logit_bias")
        deadline = time.monotonic() + self.request_timeout if self.request_timeout else None
        device = next(self.model.parameters()).device
        loop = asyncio.get_running_loop()
        answers = []
        # compiling a grammar (the first time: loading the grammar engine) takes a while
        constraints = await asyncio.to_thread(lambda: [self.constraint(request) for _ in range(n)])
        for index, constraint in enumerate(constraints):
            stream = TextStream(ids, [*(self.style.stop_strings if chat else ()), *params.stop], answer=chat)
            arrived: asyncio.Queue = asyncio.Queue()
            # Each choice its own seed (seed + index): the same request gives the same choices.
            seq = generation_for(stream, lambda item, queue=arrived: loop.call_soon_threadsafe(queue.put_nowait, item),
                                 params, params.generator(device, offset=index), deadline=deadline)
            seq.top_logprobs, seq.constraint = request.top_logprobs_wanted, constraint
            answers.append(Answer(stream, seq, arrived))
        try:
            self.engine.submit_all([answer.seq for answer in answers])
        except QueueFull as err:
            raise APIError(429, f"the server is busy ({err}); retry shortly", kind="rate_limit_exceeded") from None
        return answers

    @staticmethod
    def constraint(request: SamplingRequest) -> JsonConstraint | None:
        """The grammar an answer of ``request`` keeps to (``response_format``), if any."""
        form = request.response_format
        if form is None or form.type == "text":
            return None
        try:
            return JsonConstraint(form.json_schema.schema_ if form.type == "json_schema" else None)
        except (ValueError, ConfigError) as err:
            raise APIError(400, f"response_format: {err}", "response_format") from None

    async def score(self, prompts: Sequence[list[int]], top: int) -> list[TokenScores]:
        """Each prompt's tokens scored after its first (``echo``), off the event loop."""
        scorable = [(ids, 1) for ids in prompts if len(ids) > 1]
        scored = iter(await asyncio.to_thread(score_tokens, self.model, scorable, top) if scorable else [])
        return [next(scored) if len(ids) > 1 else TokenScores([], [], []) for ids in prompts]

    async def pieces(self, answer: Answer, request: Request) -> AsyncIterator[str]:
        """The pieces of the answer's text as its tokens arrive. A client that disconnects,
        or a stop string, ends the sequence at the engine's next step."""
        stream, seq = answer.stream, answer.seq
        checked = time.monotonic()
        try:
            while stream.finish_reason is None:
                try:
                    item = await asyncio.wait_for(answer.arrived.get(), timeout=DISCONNECT_POLL)
                except asyncio.TimeoutError:
                    item = None
                if time.monotonic() - checked >= DISCONNECT_POLL:  # also while tokens keep coming
                    if await request.is_disconnected():
                        return
                    checked = time.monotonic()
                if item is None:
                    continue
                try:
                    piece = stream.feed(item)
                except GenerationFailed:
                    raise APIError(500, "generation failed", kind="server_error") from None
                if piece:
                    yield piece
        finally:
            seq.cancel()
            self.served += 1
