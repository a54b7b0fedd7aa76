"""The model behind the server: one ``BatchEngine`` that every request decodes on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request

from gpt2_lightning.apps.serve.metrics import Metrics
from gpt2_lightning.apps.serve.schemas import APIError, ChatRequest, Message, SamplingRequest
from gpt2_lightning.data.prompts import PromptStyle
from gpt2_lightning.data.records import chat_prompt
from gpt2_lightning.errors import DataError
from gpt2_lightning.generation.engine import BatchEngine, Generation, QueueFull
from gpt2_lightning.generation.stream import GenerationFailed, TextStream, generation_for
from gpt2_lightning.model.gpt import GPTModel
from gpt2_lightning.model.tokenizer import encode

DISCONNECT_POLL = 0.5  # seconds between checks that a waiting client is still there


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
                 max_batch_size: int = 8, max_queue: int = 64, request_timeout: float | None = 600.0):
        self.model = model.eval()
        self.style = style
        self.name = name
        self.default_max_tokens = default_max_tokens
        self.request_timeout = request_timeout
        self.engine = BatchEngine(model, max_batch_size=max_batch_size, max_queue=max_queue)
        self.metrics = Metrics(self.engine)
        self.served = 0

    def chat_prompt(self, messages: list[Message]) -> str:
        """The prompt of a chat request: its conversation in the model's prompt style."""
        try:
            return chat_prompt([m.model_dump() for m in messages], self.style)
        except DataError as err:
            raise APIError(400, str(err), "messages") from None

    def answer(self, prompt: str, request: SamplingRequest, chat: bool) -> Answer:
        """``request``'s answer, queued in the engine; a 429 when the queue is full."""
        if request.model is not None and request.model != self.name:
            raise APIError(404, f"the model '{request.model}' does not exist; this server has '{self.name}'",
                           "model", "model_not_found")
        ids = encode(prompt)
        context = self.model.cfg.context_length
        if len(ids) >= context:
            raise APIError(400, f"the prompt is {len(ids)} tokens; this model's context is {context} tokens",
                           "messages" if isinstance(request, ChatRequest) else "prompt")
        params = request.sampling_params(self.default_max_tokens, context - len(ids))
        stream = TextStream(ids, [*(self.style.stop_strings if chat else ()), *params.stop])
        arrived: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        seq = generation_for(stream, lambda item: loop.call_soon_threadsafe(arrived.put_nowait, item), params,
                             params.generator(next(self.model.parameters()).device),
                             deadline=time.monotonic() + self.request_timeout if self.request_timeout else None)
        try:
            self.engine.submit(seq)
        except QueueFull as err:
            raise APIError(429, f"the server is busy ({err}); retry shortly", kind="rate_limit_exceeded") from None
        return Answer(stream, seq, arrived)

    async def pieces(self, answer: Answer, request: Request) -> AsyncIterator[str]:
        """The pieces of the answer's text as its tokens arrive. A client that disconnects,
        or a stop string, ends the sequence at the engine's next step."""
        stream, seq = answer.stream, answer.seq
        try:
            while stream.finish_reason is None:
                try:
                    item = await asyncio.wait_for(answer.arrived.get(), timeout=DISCONNECT_POLL)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
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
