"""The FastAPI app: routes, keys and limits, errors, and the OpenAI-shaped answers (whole or as
server-sent events)."""

from __future__ import annotations

import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException

from gpt2_lightning.apps.serve.logprobs import ChoiceLogprobs
from gpt2_lightning.apps.serve.schemas import (
    APIError,
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    SamplingRequest,
    TokenizeRequest,
    error_response,
)
from gpt2_lightning.apps.serve.served_model import Answer, ServedModel
from gpt2_lightning.data.prompts import PromptStyle
from gpt2_lightning.evaluate.likelihood import TokenScores
from gpt2_lightning.generation.prefix_cache import DEFAULT_MEGABYTES
from gpt2_lightning.model.gpt import GPTModel
from gpt2_lightning.model.tokenizer import EOT_ID, decode, get_tokenizer

RETRY_AFTER = 1  # seconds a client told 429 should wait
MAX_REQUEST_BYTES = 1 << 20


def create_app(model: GPTModel, style: PromptStyle, name: str = "gpt2-lightning", default_max_tokens: int = 256,
               max_batch_size: int = 8, max_queue: int = 64, request_timeout: float | None = 600.0,
               api_key: str | None = None, max_request_bytes: int = MAX_REQUEST_BYTES,
               allowed_origins: list[str] | None = None, prefix_cache_mb: float = DEFAULT_MEGABYTES) -> FastAPI:
    """The server's app. ``api_key``: every ``/v1`` route and ``/tokenize`` / ``/detokenize``
    need ``Authorization: Bearer <key>``; ``max_request_bytes``: a larger body is a 413;
    ``allowed_origins``: the web origins that may call it from a browser (CORS; none by default);
    ``prefix_cache_mb``: memory for the keys and values of recent conversations, whose next
    turns then prefill only what is new (0: none)."""
    get_tokenizer()  # fail at start, not at the first request, when the vocabulary is missing
    served = ServedModel(model, style, name, default_max_tokens, max_batch_size, max_queue, request_timeout,
                         prefix_cache_mb)
    app = FastAPI(title="gpt2-lightning", docs_url="/docs")
    app.state.served = served
    add_error_handlers(app, served)
    add_guards(app, api_key, max_request_bytes)
    if allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=allowed_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    add_info_routes(app, served)
    add_token_routes(app, served)
    add_completion_routes(app, served)
    return app


def add_guards(app: FastAPI, api_key: str | None, max_request_bytes: int) -> None:
    """The key every guarded route needs, and the size limit of a request body."""
    @app.middleware("http")
    async def guard(request: Request, call_next):
        request.state.started = time.monotonic()
        path = request.url.path
        guarded = path.startswith("/v1/") or path in ("/tokenize", "/detokenize")  # /health, /metrics stay open
        if api_key and guarded and request.method != "OPTIONS":
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return error_response(401, "a valid API key is needed: send the header 'Authorization: Bearer <key>'"
                                      if not given else "the API key is not valid", kind="invalid_api_key")
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > max_request_bytes:
            return error_response(413, f"the request body is {int(size)} bytes; this server takes at most "
                                  f"{max_request_bytes}", kind="request_too_large")
        if size is None and request.method == "POST":
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_request_bytes:
                    return error_response(413, f"the request body is over {max_request_bytes} bytes, the most "
                                          "this server takes", kind="request_too_large")
            request._body = body  # what the route reads
        return await call_next(request)


def add_error_handlers(app: FastAPI, served: ServedModel) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"
                   }.get(err.status_code, str(err.detail))
        return error_response(err.status_code, message, headers=getattr(err, "headers", None))

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError):
        headers = {"Retry-After": str(RETRY_AFTER)} if err.status == 429 else None
        if request.url.path.startswith("/v1/") and request.method == "POST":
            served.metrics.observe(err.status, time.monotonic() - request.state.started)
        return error_response(err.status, err.message, err.param, err.kind, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError):
        first = err.errors()[0]
        if isinstance(first.get("ctx", {}).get("error"), APIError):
            return await api_error(request, first["ctx"]["error"])
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


def add_token_routes(app: FastAPI, served: ServedModel) -> None:
    """vLLM's ``/tokenize`` and ``/detokenize``."""
    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "give either prompt or messages", "prompt")
        if body.messages is not None:
            tokens = await served.chat_prompt_ids(body.messages, check_length=False)
        else:
            tokens = await served.prompt_ids(body.prompt, check_length=False)
        return {"tokens": tokens, "count": len(tokens), "max_model_len": served.context_length}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        served.check_token_ids(body.tokens, "tokens")
        return {"prompt": decode(body.tokens)}


def add_completion_routes(app: FastAPI, served: ServedModel) -> None:
    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        served.check_model(body)
        ids = await served.chat_prompt_ids(body.messages)
        choices = [Choice(i, answer) for i, answer in enumerate(await served.answers(ids, body, chat=True, n=body.n))]
        return await Reply(served, body, choices, [ids], chat=True).send(request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        served.check_model(body)
        prompts = [await served.prompt_ids(p) for p in body.prompts]
        echoed = await served.score(prompts, body.logprobs or 0) if body.echo and body.logprobs is not None else None
        choices = []
        for p, ids in enumerate(prompts):
            answers = await served.answers(ids, body, chat=False, n=body.n) if body.max_tokens else [None] * body.n
            choices += [Choice(len(choices), answer, ids if body.echo else None, echoed[p] if echoed else None)
                        for answer in answers]
        return await Reply(served, body, choices, prompts, chat=False).send(request)


class Choice:
    """One choice of a reply: its answer under way (None for ``max_tokens: 0``) and, with
    ``echo``, the prompt it continues and that prompt's scores."""

    def __init__(self, index: int, answer: Answer | None, echo: list[int] | None = None,
                 echo_scores: TokenScores | None = None):
        self.index, self.answer, self.echo, self.echo_scores = index, answer, echo, echo_scores
        self.sent_tokens = 0  # the answer's tokens whose log-probabilities went out already
        self.prompt_sent = False
        self.end_sent = False

    @property
    def finish_reason(self) -> str | None:
        reason = self.answer.stream.finish_reason if self.answer else "length"
        return "length" if reason == "time_limit" else reason  # OpenAI's word for an answer cut short

    @property
    def n_tokens(self) -> int:
        return self.answer.stream.n_tokens if self.answer else 0

    def new_logprobs(self, want: int | None, offset: int) -> ChoiceLogprobs | None:
        """The log-probabilities of the tokens since the last call (None when not asked for);
        ``offset``: where their text starts in the choice's text."""
        if want is None:
            return None
        logprobs = ChoiceLogprobs(offset)
        if self.echo is not None and not self.prompt_sent:
            logprobs.add_prompt(self.echo, self.echo_scores)
            self.prompt_sent = True
        if self.answer is not None:
            scored = self.answer.seq.logprobs
            for token, scores in zip(self.answer.stream.token_ids[self.sent_tokens:self.n_tokens],
                                     scored[self.sent_tokens:]):
                logprobs.add(token, scores.logprob, scores.top)
            if self.ended_at_end_of_text and not self.end_sent:  # listed as OpenAI lists it, with no text
                logprobs.add(EOT_ID, scored[self.n_tokens].logprob, scored[self.n_tokens].top, text=False)
                self.end_sent = True
            self.sent_tokens = self.n_tokens
        return logprobs

    @property
    def ended_at_end_of_text(self) -> bool:
        seq = self.answer.seq
        return self.answer.stream.finish_reason == "stop" and seq.finish_reason == "stop" and \
            seq.last_token == EOT_ID and seq.n_generated == self.n_tokens and len(seq.logprobs) > self.n_tokens


class Reply:
    """The OpenAI-shaped reply to one completion request: one JSON body, or server-sent events."""

    def __init__(self, served: ServedModel, body: SamplingRequest, choices: list[Choice], prompts: list[list[int]],
                 chat: bool):
        self.served, self.body, self.choices, self.prompts, self.chat = served, body, choices, prompts, chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.kind = "chat.completion" if chat else "text_completion"
        self.want = body.top_logprobs_wanted

    async def send(self, request: Request):
        if not self.body.stream:
            try:
                parts = []
                for choice in self.choices:
                    text = "" if choice.answer is None else \
                        "".join([piece async for piece in self.served.pieces(choice.answer, request)])
                    parts.append(self._whole_choice(choice, text))
            finally:
                self._cancel()
            self.served.metrics.observe(200, time.monotonic() - request.state.started)
            return {**self._head(self.kind), "choices": parts, "usage": self._usage()}
        return StreamingResponse(self._events(request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _events(self, request: Request) -> AsyncIterator[str]:
        kind = f"{self.kind}.chunk" if self.chat else self.kind
        try:
            for choice in self.choices:  # each choice's chunks in turn; all of them decode together
                echo = decode(choice.echo) if choice.echo is not None else ""
                if self.chat:
                    yield self._chunk(kind, {"index": choice.index, "delta": {"role": "assistant", "content": ""},
                                             "logprobs": None, "finish_reason": None})
                elif echo:
                    yield self._chunk(kind, self._text_choice(choice, echo, None, 0))
                offset = len(echo)
                async for piece in self.served.pieces(choice.answer, request):
                    yield self._chunk(kind, self._piece(choice, piece, None, offset))
                    offset += len(piece)
                yield self._chunk(kind, self._piece(choice, "", choice.finish_reason, offset))
            if self.body.stream_options and self.body.stream_options.include_usage:
                yield self._chunk(kind, None, usage=self._usage())
            yield "data: [DONE]\n\n"
        finally:
            self._cancel()
            self.served.metrics.observe(200, time.monotonic() - request.state.started)

    def _cancel(self) -> None:
        for choice in self.choices:
            if choice.answer is not None:
                choice.answer.seq.cancel()

    def _head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.served.name}

    def _chunk(self, kind: str, choice: dict | None, usage: dict | None = None) -> str:
        data = {**self._head(kind), "choices": [choice] if choice else []}
        if usage is not None:
            data["usage"] = usage
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    def _whole_choice(self, choice: Choice, text: str) -> dict:
        if self.chat:
            logprobs = choice.new_logprobs(self.want, 0)
            return {"index": choice.index, "message": {"role": "assistant", "content": text},
                    "logprobs": logprobs.chat() if logprobs else None, "finish_reason": choice.finish_reason}
        echo = decode(choice.echo) if choice.echo is not None else ""
        return self._text_choice(choice, echo + text, choice.finish_reason, 0)

    def _piece(self, choice: Choice, text: str, finish: str | None, offset: int) -> dict:
        if not self.chat:
            return self._text_choice(choice, text, finish, offset)
        logprobs = choice.new_logprobs(self.want, offset)
        return {"index": choice.index, "delta": {"content": text} if text else {},
                "logprobs": logprobs.chat() if logprobs else None, "finish_reason": finish}

    def _text_choice(self, choice: Choice, text: str, finish: str | None, offset: int) -> dict:
        logprobs = choice.new_logprobs(self.want, offset)
        return {"index": choice.index, "text": text, "logprobs": logprobs.legacy() if logprobs else None,
                "finish_reason": finish}

    def _usage(self) -> dict:
        prompt = sum(len(ids) for ids in self.prompts)
        completion = sum(choice.n_tokens for choice in self.choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
