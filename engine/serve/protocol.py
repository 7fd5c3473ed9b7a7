"""The OpenAI wire format: request bodies (pydantic), errors, response objects, and stop
sequences found in streamed text. Imported by the server process only."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_STOPS = 4  # what OpenAI accepts


class ApiError(Exception):
    """An OpenAI-style error: {"error": {"message", "type", "param", "code"}} with a status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


# -- requests --------------------------------------------------------------------------------------


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class _Sampling(BaseModel):
    # Clients send fields this server has no use for (user, metadata, ...): they are ignored.
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    # vLLM's extensions, for the same clients and benchmarks
    repetition_penalty: float | None = Field(None, gt=0)
    ignore_eos: bool = False

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        stops = [s for s in stops if s]
        if len(stops) > MAX_STOPS:
            raise ApiError(400, f"stop takes at most {MAX_STOPS} sequences", param="stop")
        return stops

    def check_supported(self) -> None:
        if (self.n or 1) != 1:
            raise ApiError(400, "n must be 1: one answer per request", param="n")
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name):
                raise ApiError(400, f"{name} is not supported; use repetition_penalty", param=name)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None

    def text(self, index: int) -> str:
        if self.role in ("tool", "function"):
            raise ApiError(400, "tool messages are not supported", param=f"messages.{index}")
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content or []:
            if part.type != "text" or part.text is None:
                raise ApiError(400, f"content parts of type {part.type!r} are not supported; "
                               "send text", param=f"messages.{index}.content")  # fmt: skip
            parts.append(part.text)
        return "".join(parts)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[Any] | None = None

    def chat_messages(self) -> list[dict[str, str]]:
        if self.tools:
            raise ApiError(400, "tools are not supported by this server", param="tools")
        roles = {"developer": "system"}
        return [
            {"role": roles.get(m.role, m.role), "content": m.text(i)}
            for i, m in enumerate(self.messages)
        ]


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = None

    def prompt_text(self) -> str:
        if self.echo or self.suffix or self.logprobs:
            raise ApiError(400, "echo, suffix and logprobs are not supported", param="prompt")
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise ApiError(400, "send one prompt per request", param="prompt")
        return self.prompt[0]


def parse_body(body: bytes, kind: type[_Sampling]) -> Any:
    """The request, or an ApiError: 400 for what is not a JSON object, 422 for a field of the
    wrong type or out of range."""
    try:
        data = json.loads(body)
    except ValueError as exc:  # bad JSON and bytes that are not UTF-8
        raise ApiError(
            400, f"the request body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    try:
        request = kind.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise ApiError(422, f"{param}: {first['msg']}", param=param, code="invalid_value") from None
    request.check_supported()
    return request


# -- responses -------------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def models_list(names: list[str], created: int, owner: str) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": n, "object": "model", "created": created, "owned_by": owner}
                 for n in names],
    }  # fmt: skip


def chat_completion(
    rid: str, model: str, text: str, finish: str, use: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish,
        }],
        "usage": use,
    }  # fmt: skip


def chat_chunk(
    rid: str, model: str, delta: dict[str, str], finish: str | None = None
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def completion(
    rid: str, model: str, text: str, finish: str | None, use: dict[str, int] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }
    if use is not None:
        body["usage"] = use
    return body


def usage_chunk(rid: str, model: str, obj: str, use: dict[str, int]) -> dict[str, Any]:
    """The last chunk of a stream asked for `include_usage`: no choices, the usage."""
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model,
            "choices": [], "usage": use}  # fmt: skip


def sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


# -- stop sequences --------------------------------------------------------------------------------


class StopScanner:
    """Finds stop sequences in text that arrives piece by piece. `feed` returns the text that
    is safe to send: it holds back an end that could be the start of a stop sequence, and
    ends at the first stop sequence (`hit`). `trim_start` drops leading whitespace (chat
    templates often open an answer with a newline; `ftui chat` drops it too)."""

    def __init__(self, stops: list[str], trim_start: bool = False) -> None:
        self.stops = [s for s in stops if s]
        self.hit = False
        self._buffer = ""
        self._trim = trim_start

    def feed(self, text: str) -> str:
        if self.hit:
            return ""
        buffer = self._buffer + text
        found = [i for i in (buffer.find(s) for s in self.stops) if i >= 0]
        if found:
            self.hit = True
            self._buffer = ""
            return self._out(buffer[: min(found)])
        hold = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(buffer)), hold, -1):
                if buffer.endswith(stop[:size]):
                    hold = size
                    break
        self._buffer = buffer[len(buffer) - hold :]
        return self._out(buffer[: len(buffer) - hold])

    def flush(self) -> str:
        """What was held back, once the answer ended without reaching a stop sequence."""
        rest, self._buffer = ("" if self.hit else self._buffer), ""
        return self._out(rest)

    def _out(self, text: str) -> str:
        if self._trim:
            text = text.lstrip()
            self._trim = not text
        return text
