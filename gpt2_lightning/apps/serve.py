"""Serve a model over an OpenAI-compatible HTTP API, with a web chat page.

POST /v1/chat/completions and POST /v1/completions (with "stream": true as server-sent
events), GET /v1/models, GET /health, GET /metrics (Prometheus) and the chat page at /.
Requests decode together (continuous batching): each joins the running batch at the next
step and leaves it when done; when --max-queue requests wait already, a 429 says when to
retry. A client that disconnects stops its generation.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from omegaconf import OmegaConf
from pydantic import BaseModel, Field, field_validator

from gpt2_lightning.apps.inference import add_model_arguments, model_for_generation
from gpt2_lightning.data.prompts import PromptStyle
from gpt2_lightning.data.records import check_messages
from gpt2_lightning.errors import DataError
from gpt2_lightning.generation.engine import BatchEngine, Generation, QueueFull
from gpt2_lightning.generation.sampling import sampling_generator
from gpt2_lightning.generation.stream import GenerationFailed, TextStream, generation_for
from gpt2_lightning.model.gpt import GPTModel
from gpt2_lightning.model.tokenizer import encode, get_tokenizer

RETRY_AFTER = 1  # seconds a client told 429 should wait
DISCONNECT_POLL = 0.5  # seconds between checks that a waiting client is still there


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


LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """What ``/metrics`` reports, in the Prometheus text format."""

    def __init__(self, engine: BatchEngine, window: float = 10.0):
        self.engine = engine
        self.window = window
        self.requests: collections.Counter[str] = collections.Counter()
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def observe(self, status: int, seconds: float) -> None:
        self.requests[str(status)] += 1
        self.latency_sum += seconds
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def tokens_per_second(self) -> float:
        """Generated tokens per second over the last ``window`` seconds."""
        now, total = time.monotonic(), self.engine.generated_tokens
        self._samples.append((now, total))
        while self._samples and now - self._samples[0][0] > self.window:
            self._samples.popleft()
        first_time, first_total = self._samples[0]
        return (total - first_total) / (now - first_time) if now > first_time else 0.0

    def render(self) -> str:
        lines = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            lines.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}"])
            lines.extend(f"{name}{labels} {value:g}" for labels, value in samples)

        metric("gpt2_queue_depth", "gauge", "Requests waiting for a row in the batch.",
               [("", self.engine.queue_depth)])
        metric("gpt2_batch_size", "gauge", "Sequences decoding in the running batch.", [("", self.engine.batch_size)])
        metric("gpt2_generated_tokens_total", "counter", "Tokens generated since the start.",
               [("", self.engine.generated_tokens)])
        metric("gpt2_generated_tokens_per_second", "gauge", f"Tokens generated per second over the last "
               f"{self.window:g} s.", [("", self.tokens_per_second())])
        metric("gpt2_requests_total", "counter", "Completion requests answered, by HTTP status.",
               [(f'{{status="{status}"}}', count) for status, count in sorted(self.requests.items())])
        cumulative = list(itertools.accumulate(self.latency_counts))
        metric("gpt2_request_duration_seconds", "histogram", "Time from a completion request to its last byte.",
               [*((f'_bucket{{le="{bound:g}"}}', n) for bound, n in zip(LATENCY_BUCKETS, cumulative)),
                ('_bucket{le="+Inf"}', cumulative[-1]), ("_sum", self.latency_sum), ("_count", cumulative[-1])])
        return "\n".join(lines) + "\n"


@dataclass
class Answer:
    """A request's answer under way: its text so far, its sequence in the engine, and the
    tokens the engine has sent it."""

    stream: TextStream
    seq: Generation
    arrived: asyncio.Queue


class Generator:
    """The model behind a ``BatchEngine``: requests decode together, joining the running
    batch as rows free up; those that find the queue full get a 429."""

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
        conversation = [{"role": "system" if m.role == "developer" else m.role, "content": m.content}
                        for m in messages if m.role in ("system", "developer", "user", "assistant")]
        try:
            check_messages(conversation, "messages", answered=False)
        except DataError as err:
            raise APIError(400, str(err), "messages") from None
        return self.style.render(conversation)

    def answer(self, prompt: str, request: SamplingRequest, stop: list[str]) -> Answer:
        """``request``'s answer, queued in the engine; a 429 when the queue is full."""
        if request.model is not None and request.model != self.name:
            raise APIError(404, f"the model '{request.model}' does not exist; this server has '{self.name}'",
                           "model", "model_not_found")
        ids = encode(prompt)
        context = self.model.cfg.context_length
        if len(ids) >= context:
            raise APIError(400, f"the prompt is {len(ids)} tokens; this model's context is {context} tokens",
                           "messages" if isinstance(request, ChatRequest) else "prompt")
        stream = TextStream(ids, stop)
        arrived: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        seq = generation_for(
            stream, lambda item: loop.call_soon_threadsafe(arrived.put_nowait, item),
            min(request.max_tokens or self.default_max_tokens, context - len(ids)), request.temperature,
            request.top_k, request.top_p if request.top_p < 1.0 else None,
            sampling_generator(self.model, request.temperature, request.seed),
            deadline=time.monotonic() + self.request_timeout if self.request_timeout else None)
        try:
            self.engine.submit(seq)
        except QueueFull as err:
            raise APIError(429, f"the server is busy ({err}); retry shortly", kind="rate_limit_exceeded") from None
        return Answer(stream, seq, arrived)

    async def run(self, answer: Answer, request: Request) -> AsyncIterator[str]:
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


def create_app(model: GPTModel, style: PromptStyle, name: str = "gpt2-lightning", default_max_tokens: int = 256,
               max_batch_size: int = 8, max_queue: int = 64, request_timeout: float | None = 600.0) -> FastAPI:
    get_tokenizer()  # fail at start, not at the first request, when the vocabulary is missing
    engine = Generator(model, style, name, default_max_tokens, max_batch_size, max_queue, request_timeout)
    app = FastAPI(title="gpt2-lightning", docs_url="/docs")
    app.state.engine = engine
    page = resources.files("gpt2_lightning.apps").joinpath("chat.html").read_text(encoding="utf-8")

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError):
        headers = {"Retry-After": str(RETRY_AFTER)} if err.status == 429 else None
        if request.url.path.startswith("/v1/") and request.method == "POST":
            engine.metrics.observe(err.status, time.monotonic() - request.state.started)
        return _error(err.status, err.message, err.param, err.kind, headers)

    @app.middleware("http")
    async def started_at(request: Request, call_next):
        request.state.started = time.monotonic()
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError):
        first = err.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if first.get("type") == "json_invalid":
            return _error(400, f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}")
        return _error(400, f"{where}: {first.get('msg')}" if where else first.get("msg"), where or None)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, "waiting": engine.engine.queue_depth,
                "running": engine.engine.batch_size, "served": engine.served}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        return PlainTextResponse(engine.metrics.render(), media_type="text/plain; version=0.0.4")

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
        return await _respond(request, body, engine.answer(engine.chat_prompt(body.messages), body, stop), chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await _respond(request, body, engine.answer(body.prompt, body, body.stop_list()), chat=False)

    async def _respond(request: Request, body: SamplingRequest, answer: Answer, chat: bool):
        stream = answer.stream
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        kind = "chat.completion" if chat else "text_completion"

        def choice(text: str | None, finish: str | None, first: bool = False) -> dict:
            finish = "length" if finish == "time_limit" else finish  # OpenAI's word for an answer cut short
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
            text = "".join([piece async for piece in engine.run(answer, request)])
            engine.metrics.observe(200, time.monotonic() - request.state.started)
            return {"id": rid, "object": kind, "created": created, "model": name,
                    "choices": [choice(text, stream.finish_reason)], "usage": usage()}

        chunk_kind = f"{kind}.chunk" if chat else kind

        async def events():
            try:
                first = True
                if chat:
                    yield _sse({"id": rid, "object": chunk_kind, "created": created, "model": name,
                                "choices": [choice(None, None, first=True)]})
                    first = False
                async for piece in engine.run(answer, request):
                    yield _sse({"id": rid, "object": chunk_kind, "created": created, "model": name,
                                "choices": [choice(piece, None, first)]})
                    first = False
                yield _sse({"id": rid, "object": chunk_kind, "created": created, "model": name,
                            "choices": [choice(None, stream.finish_reason)], "usage": usage()})
                yield "data: [DONE]\n\n"
            finally:
                answer.seq.cancel()
                engine.metrics.observe(200, time.monotonic() - request.state.started)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
           headers: dict[str, str] | None = None):
    return JSONResponse(status_code=status, headers=headers,
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
    parser.add_argument("--max-batch-size", type=int, default=8,
                        help="requests decoded together; more wait in the queue (default: %(default)s)")
    parser.add_argument("--max-queue", type=int, default=64,
                        help="requests waiting for a row; beyond, 429 with Retry-After (default: %(default)s)")
    parser.add_argument("--request-timeout", type=float, default=600.0,
                        help="seconds a request may generate; then its answer ends as it is (default: %(default)s)")
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
    app = create_app(model, style, name, args.max_tokens, args.max_batch_size, args.max_queue, args.request_timeout)
    print(f"serving {name} ({style.name} prompts) on http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
