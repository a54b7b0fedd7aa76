"""The OpenAI-compatible request bodies, their sampling settings, and the API's error."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gpt2_lightning.generation.sampling import SamplingParams


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def error_response(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """An OpenAI-style error body."""
    return JSONResponse(status_code=status, headers=headers,
                        content={"error": {"message": message, "type": kind, "param": param, "code": None}})


MAX_TOP_LOGPROBS = 20
MAX_CHOICES = 16


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    name: str = "response"
    description: str | None = None
    schema_: dict = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise APIError(400, "response_format: type json_schema needs its json_schema", "response_format")
        return self


class SamplingRequest(BaseModel):
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    logit_bias: dict[Annotated[str, Field(pattern=r"^\d+$")], Annotated[float, Field(ge=-100, le=100)]] | None = None
    min_tokens: int = Field(0, ge=0)
    response_format: ResponseFormat | None = None
    # accepted as OpenAI accepts them, changing nothing of the answer; any other field is a 400
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_unimplemented_fields(cls, data):
        if isinstance(data, dict):
            unknown = [key for key in data if key not in cls.model_fields]
            if unknown:
                raise APIError(400, f"{unknown[0]}: this server does not implement this field", unknown[0])
        return data

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value):
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    @property
    def answer_limit(self) -> int | None:
        """The most tokens the request asks for (None: the server's default)."""
        return self.max_tokens

    @property
    def top_logprobs_wanted(self) -> int | None:
        """None: no log-probabilities; k: each token's and the k most likely."""
        return None

    def sampling_params(self, default_max_tokens: int, room: int) -> SamplingParams:
        """The request's settings, its answer at most ``room`` tokens long."""
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        limit = self.answer_limit
        return SamplingParams(max(1, min(default_max_tokens if limit is None else limit, room)), self.temperature,
                              self.top_k, self.top_p if self.top_p < 1.0 else None, self.seed, tuple(stop),
                              self.presence_penalty, self.frequency_penalty, self.repetition_penalty,
                              tuple((int(t), b) for t, b in (self.logit_bias or {}).items()), self.min_tokens)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""

    @model_validator(mode="before")
    @classmethod
    def _no_tools(cls, data):
        if isinstance(data, dict) and (data.get("role") == "tool" or data.get("tool_calls")):
            raise APIError(400, "messages: tool calls and tool messages are not supported by this server", "messages")
        return data


class ChatRequest(SamplingRequest):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs: needs logprobs: true", "top_logprobs")
        return self

    @property
    def answer_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def top_logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


TokenIds = list[Annotated[int, Field(ge=0)]]


class CompletionRequest(SamplingRequest):
    prompt: str | TokenIds | list[str] | list[TokenIds]
    max_tokens: int | None = Field(16, ge=0)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _something_to_answer(self):
        if self.max_tokens == 0 and not self.echo:
            raise APIError(400, "max_tokens: 0 needs echo: true (there is nothing else to return)", "max_tokens")
        if self.max_tokens == 0 and self.stream:
            raise APIError(400, "max_tokens: 0 cannot be streamed", "max_tokens")
        prompts = self.prompts
        if not prompts or any(len(p) == 0 for p in prompts):
            raise APIError(400, "prompt: a prompt is empty", "prompt")
        return self

    @property
    def prompts(self) -> list[str | list[int]]:
        """The request's prompts: texts or token ids."""
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return [self.prompt]
        return list(self.prompt)

    @property
    def top_logprobs_wanted(self) -> int | None:
        return self.logprobs


class TokenizeRequest(BaseModel):
    model: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = None


class DetokenizeRequest(BaseModel):
    model: str | None = None
    tokens: TokenIds = Field(max_length=1 << 20)
