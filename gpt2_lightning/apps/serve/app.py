"""The FastAPI app: routes, errors, and the OpenAI-shaped answers (whole or as server-sent events)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse, StreamingResponse

from gpt2_lightning.apps.serve.schemas import APIError, ChatRequest, CompletionRequest, SamplingRequest, error_response
from gpt2_lightning.apps.serve.served_model import Answer, ServedModel
from gpt2_lightning.data.prompts import PromptStyle
from gpt2_lightning.model.gpt import GPTModel
from gpt2_lightning.model.tokenizer import get_tokenizer

RETRY_AFTER = 1  # seconds a client told 429 should wait


def create_app(model: GPTModel, style: PromptStyle, name: str = "gpt2-lightning", default_max_tokens: int = 256,
               max_batch_size: int = 8, max_queue: int = 64, request_timeout: float | None = 600.0) -> FastAPI:
    get_tokenizer()  # fail at start, not at the first request, when the vocabulary is missing
    served = ServedModel(model, style, name, default_max_tokens, max_batch_size, max_queue, request_timeout)
    app = FastAPI(title="gpt2-lightning", docs_url="/docs")
    app.state.served = served
    add_error_handlers(app, served)
    add_info_routes(app, served)
    add_completion_routes(app, served)
    return app


def add_error_handlers(app: FastAPI, served: ServedModel) -> None:
    @app.middleware("http")
    async def started_at(request: Request, call_next):
        request.state.started = time.monotonic()
        return await call_next(request)

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError):
        headers = {"Retry-After": str(RETRY_AFTER)} if err.status == 429 else None
        if request.url.path.startswith("/v1/") and request.method == "POST":
            served.metrics.observe(err.status, time.monotonic() - request.state.started)
        return error_response(err.status, err.message, err.param, err.kind, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError):
        first = err.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if first.get("type") == "json_invalid":
            return error_response(400, f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}")
        return error_response(400, f"{where}: {first.get('msg')}" if where else first.get("msg"), where or None)


def add_info_routes(app: FastAPI, served: ServedModel) -> None:
    page = resources.files("gpt2_lightning.apps").joinpath("chat.html").read_text(encoding="utf-8")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": served.name, "waiting": served.engine.queue_depth,
                "running": served.engine.batch_size, "served": served.served}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        return PlainTextResponse(served.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": served.name, "object": "model", "created": 0,
                                            "owned_by": "gpt2-lightning"}]}

    @app.get("/", response_class=HTMLResponse)
    async def chat_page():
        return page.replace("{{MODEL}}", served.name)


def add_completion_routes(app: FastAPI, served: ServedModel) -> None:
    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        answer = served.answer(served.chat_prompt(body.messages), body, chat=True)
        return await Reply(served, body, answer, chat=True).send(request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await Reply(served, body, served.answer(body.prompt, body, chat=False), chat=False).send(request)


class Reply:
    """The OpenAI-shaped reply to one completion request: one JSON body, or server-sent events."""

    def __init__(self, served: ServedModel, body: SamplingRequest, answer: Answer, chat: bool):
        self.served, self.body, self.answer, self.chat = served, body, answer, chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.kind = "chat.completion" if chat else "text_completion"

    async def send(self, request: Request):
        if not self.body.stream:
            text = "".join([piece async for piece in self.served.pieces(self.answer, request)])
            self.served.metrics.observe(200, time.monotonic() - request.state.started)
            return {**self._head(self.kind), "choices": [self._choice(text, self.answer.stream.finish_reason)],
                    "usage": self._usage()}
        return StreamingResponse(self._events(request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _events(self, request: Request) -> AsyncIterator[str]:
        kind = f"{self.kind}.chunk" if self.chat else self.kind
        try:
            first = True
            if self.chat:
                yield _sse({**self._head(kind), "choices": [self._choice(None, None, first=True)]})
                first = False
            async for piece in self.served.pieces(self.answer, request):
                yield _sse({**self._head(kind), "choices": [self._choice(piece, None, first)]})
                first = False
            yield _sse({**self._head(kind), "choices": [self._choice(None, self.answer.stream.finish_reason)],
                        "usage": self._usage()})
            yield "data: [DONE]\n\n"
        finally:
            self.answer.seq.cancel()
            self.served.metrics.observe(200, time.monotonic() - request.state.started)

    def _head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.served.name}

    def _choice(self, text: str | None, finish: str | None, first: bool = False) -> dict:
        finish = "length" if finish == "time_limit" else finish  # OpenAI's word for an answer cut short
        if not self.chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        if self.body.stream:
            delta = {"role": "assistant"} if first else {}
            if text:
                delta["content"] = text
            return {"index": 0, "delta": delta, "finish_reason": finish}
        return {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}

    def _usage(self) -> dict:
        stream = self.answer.stream
        prompt = len(stream.prompt_ids)
        return {"prompt_tokens": prompt, "completion_tokens": stream.n_tokens, "total_tokens": prompt + stream.n_tokens}


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
