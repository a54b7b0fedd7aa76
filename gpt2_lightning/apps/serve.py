"""Serve a model over an OpenAI-compatible HTTP API, with a web chat page.

POST /v1/chat/completions and POST /v1/completions (with "stream": true as server-sent
events), GET /v1/models, GET /health, and the chat page at /. One model, one generation
at a time: requests wait their turn in arrival order, while /health and the page keep
answering.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from omegaconf import OmegaConf
from pydantic import BaseModel, Field, field_validator

from gpt2_lightning.apps.inference import add_model_arguments, model_for_generation
from gpt2_lightning.data.prompts import PromptStyle
from gpt2_lightning.generation.sampling import sampling_generator
from gpt2_lightning.generation.stream import TextStream
from gpt2_lightning.model.gpt import GPTModel
from gpt2_lightning.model.tokenizer import encode, get_tokenizer


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


class SamplingRequest(BaseModel):
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    n: int = Field(1, ge=1, le=1)

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value):
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class Message(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class ChatRequest(SamplingRequest):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(SamplingRequest):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value):
        if isinstance(value, list):
            if len(value) != 1:
                raise ValueError("exactly one prompt is supported")
            return value[0]
        return value


class Generator:
    """The model behind a one-thread executor: generations run one at a time, first come
    first served, off the event loop."""

    def __init__(self, model: GPTModel, style: PromptStyle, name: str, default_max_tokens: int = 256):
        self.model = model.eval()
        self.style = style
        self.name = name
        self.default_max_tokens = default_max_tokens
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        self.waiting = 0
        self.served = 0

    def chat_prompt(self, messages: list[Message]) -> str:
        system = " ".join(m.content for m in messages if m.role in ("system", "developer"))
        turns = [m for m in messages if m.role in ("user", "assistant")]
        if not turns or turns[-1].role != "user":
            raise APIError(400, "the last message must come from the user", "messages")
        history, question = [], None
        for message in turns[:-1]:
            if message.role == "user":
                question = message.content
            elif question is not None:
                history.append((question, message.content))
                question = None
        instruction = turns[-1].content
        if system:
            instruction = f"{system}\n\n{instruction}"
        return self.style.conversation(history, instruction)

    def stream(self, prompt: str, request: SamplingRequest, stop: list[str]) -> TextStream:
        if request.model is not None and request.model != self.name:
            raise APIError(404, f"the model '{request.model}' does not exist; this server has '{self.name}'",
                           "model", "model_not_found")
        ids = encode(prompt)
        context = self.model.cfg.context_length
        if len(ids) >= context:
            raise APIError(400, f"the prompt is {len(ids)} tokens; this model's context is {context} tokens",
                           "messages" if isinstance(request, ChatRequest) else "prompt")
        max_tokens = min(request.max_tokens or self.default_max_tokens, context - len(ids))
        generator = sampling_generator(self.model, request.temperature, request.seed)
        return TextStream(self.model, ids, max_tokens, request.temperature, request.top_k,
                          request.top_p if request.top_p < 1.0 else None, stop, generator)

    async def run(self, stream: TextStream, cancelled: threading.Event | None = None) -> AsyncIterator[str]:
        """The pieces of ``stream``, generated in the executor when this request's turn comes."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        done = object()

        def produce():
            try:
                for piece in stream:
                    if cancelled is not None and cancelled.is_set():
                        break
                    loop.call_soon_threadsafe(queue.put_nowait, piece)
            except Exception as err:  # surfaced to the request that asked
                loop.call_soon_threadsafe(queue.put_nowait, err)
            finally:
                self.served += 1
                loop.call_soon_threadsafe(queue.put_nowait, done)

        self.waiting += 1
        loop.run_in_executor(self.executor, produce)  # produce() reports its own errors through the queue
        try:
            while (item := await queue.get()) is not done:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self.waiting -= 1
            if cancelled is not None:
                cancelled.set()  # a client that left stops the generation at the next token


def create_app(model: GPTModel, style: PromptStyle, name: str = "gpt2-lightning",
               default_max_tokens: int = 256) -> FastAPI:
    get_tokenizer()  # fail at start, not at the first request, when the vocabulary is missing
    engine = Generator(model, style, name, default_max_tokens)
    app = FastAPI(title="gpt2-lightning", docs_url="/docs")
    app.state.engine = engine
    page = resources.files("gpt2_lightning.apps").joinpath("chat.html").read_text(encoding="utf-8")

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError):
        return _error(err.status, err.message, err.param, err.kind)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError):
        first = err.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if first.get("type") == "json_invalid":
            return _error(400, f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}")
        return _error(400, f"{where}: {first.get('msg')}" if where else first.get("msg"), where or None)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, "waiting": engine.waiting, "served": engine.served}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0,
                                            "owned_by": "gpt2-lightning"}]}

    @app.get("/", response_class=HTMLResponse)
    async def chat_page():
        return page.replace("{{MODEL}}", name)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        stop = [*engine.style.stop_strings, *body.stop_list()]
        stream = engine.stream(engine.chat_prompt(body.messages), body, stop)
        return await _respond(request, body, stream, chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        stream = engine.stream(body.prompt, body, body.stop_list())
        return await _respond(request, body, stream, chat=False)

    async def _respond(request: Request, body: SamplingRequest, stream: TextStream, chat: bool):
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        kind = "chat.completion" if chat else "text_completion"

        def choice(text: str | None, finish: str | None, first: bool = False) -> dict:
            if not chat:
                return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            if body.stream:
                delta = {"role": "assistant"} if first else {}
                if text:
                    delta["content"] = text
                return {"index": 0, "delta": delta, "finish_reason": finish}
            return {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}

        def usage() -> dict:
            prompt = len(stream.prompt_ids)
            return {"prompt_tokens": prompt, "completion_tokens": stream.n_tokens,
                    "total_tokens": prompt + stream.n_tokens}

        if not body.stream:
            text = "".join([piece async for piece in engine.run(stream)])
            return {"id": rid, "object": kind, "created": created, "model": name,
                    "choices": [choice(text, stream.finish_reason)], "usage": usage()}

        chunk_kind = f"{kind}.chunk" if chat else kind
        cancelled = threading.Event()

        async def events():
            try:
                first = True
                if chat:
                    yield _sse({"id": rid, "object": chunk_kind, "created": created, "model": name,
                                "choices": [choice(None, None, first=True)]})
                    first = False
                async for piece in engine.run(stream, cancelled):
                    if await request.is_disconnected():
                        cancelled.set()
                        return
                    yield _sse({"id": rid, "object": chunk_kind, "created": created, "model": name,
                                "choices": [choice(piece, None, first)]})
                    first = False
                yield _sse({"id": rid, "object": chunk_kind, "created": created, "model": name,
                            "choices": [choice(None, stream.finish_reason)], "usage": usage()})
                yield "data: [DONE]\n\n"
            finally:
                cancelled.set()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": kind, "param": param, "code": None}})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--model-name", "--name", dest="name", help="the model id in the API (default: a run's "
                        "experiment and model, e.g. quickstart-gpt2-small; else the folder or file name)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; 0.0.0.0 exposes the server to the network (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=256,
                        help="answer length when a request does not say (default: %(default)s)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                        help="the server's log (default: %(default)s)")


def served_name(spec: str) -> str:
    """A model id that says what is served: for a run (its directory, export or checkpoint) its
    experiment and model (``quickstart-gpt2-small``), else the folder or file name."""
    path = Path(spec).resolve()
    if not path.exists():  # a size name or a URL
        return spec
    for run in (path, path.parent, path.parent.parent):
        saved = run / ".hydra"
        if (saved / "config.yaml").is_file() and (saved / "hydra.yaml").is_file():
            model = OmegaConf.load(saved / "config.yaml").model.name
            experiment = OmegaConf.load(saved / "hydra.yaml").hydra.runtime.choices.get("experiment")
            return "-".join(part for part in (experiment, model) if part)
    return (path.stem if path.suffix else path.name) or "gpt2-lightning"


def run(args: argparse.Namespace) -> None:
    import uvicorn

    model, style = model_for_generation(args)
    name = args.name or served_name(args.model)
    app = create_app(model, style, name, args.max_tokens)
    print(f"serving {name} ({style.name} prompts) on http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
