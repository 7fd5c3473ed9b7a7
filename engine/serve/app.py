"""The HTTP side: a FastAPI app with OpenAI's routes over `ServedModels`.

    GET  /health               liveness, what is loaded, whether an answer is being generated
    GET  /v1/models[/{name}]   every checkpoint of the run, and `base`
    POST /v1/chat/completions  through the run's chat template; SSE with "stream": true
    POST /v1/completions       raw text continuation

Every error is OpenAI's JSON shape (400 bad JSON or values, 401 key, 404 model or route, 413
body, 422 a field's type or range, 500 a failed generation), never a traceback. With a key,
every route needs `Authorization: Bearer KEY`. A client that goes away mid-answer stops its
generation. Imported by the server process only (FastAPI loads inside `create_app`).

No `from __future__ import annotations` here: FastAPI reads the routes' annotations (`Request`,
imported inside `create_app`) at run time.
"""

import asyncio
import secrets
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from engine.chat import ChatError, GenerationSettings
from engine.serve.answers import Answer, ServedModels
from engine.serve.options import MAX_BODY_BYTES
from engine.serve.protocol import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    chat_chunk,
    chat_completion,
    completion,
    models_list,
    new_id,
    parse_body,
    sse,
    usage,
    usage_chunk,
)
from engine.serve.state import ServeDir

DRAIN_LIMIT = 16 * MAX_BODY_BYTES  # an oversized body is read to here (so the 413 arrives)
DISCONNECT_POLL_S = 0.25


@dataclass
class Counters:
    started_at: float = field(default_factory=time.time)
    requests: int = 0
    active: int = 0  # answers generating or queued for the model


@dataclass
class Job:
    """One completion request on its way: what `_finish` records."""

    rid: str
    endpoint: str
    variant: str
    stream: bool
    arrived: float
    prompt_tokens: int
    answer: Answer


async def read_body(request: Any) -> bytes:
    """The body, or 413 when it is over MAX_BODY_BYTES (read on to DRAIN_LIMIT so that the
    client, still sending, gets the answer instead of a broken connection)."""
    declared = request.headers.get("content-length", "")
    too_big = ApiError(413, f"the request body is over {MAX_BODY_BYTES // 1024 // 1024} MiB",
                       code="request_too_large")  # fmt: skip
    if declared.isdigit() and int(declared) > DRAIN_LIMIT:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > DRAIN_LIMIT:
            raise too_big
        if size <= MAX_BODY_BYTES:
            chunks.append(chunk)
    if size > MAX_BODY_BYTES:
        raise too_big
    return b"".join(chunks)


def _settings(request: Any, max_new_tokens: int) -> GenerationSettings:
    return GenerationSettings(
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        max_new_tokens=max_new_tokens,
        repetition_penalty=request.repetition_penalty or 1.0,
        seed=request.seed,
        ignore_eos=request.ignore_eos,
    )


def create_app(
    models: ServedModels,
    serve: ServeDir | None = None,
    api_key: str | None = None,
    log: Callable[[str], None] | None = None,
) -> Any:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    counters = Counters()
    app = FastAPI(title="ftui serve", docs_url=None, redoc_url=None, openapi_url=None)

    class KeyCheck:
        """Every request carries `Authorization: Bearer KEY`, or gets 401."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and api_key is not None:
                header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
                scheme, _, token = header.partition(" ")
                if scheme.lower() != "bearer" or not secrets.compare_digest(
                    token.strip().encode(), api_key.encode()
                ):
                    error = ApiError(
                        401,
                        "a valid API key is required: send Authorization: Bearer KEY",
                        code="invalid_api_key",
                    )
                    response = JSONResponse(error.body(), status_code=401,
                                            headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
                    await response(scope, receive, send)
                    return
            await self.inner(scope, receive, send)

    app.add_middleware(KeyCheck)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Any:
        if request.url.path in ("/v1/chat/completions", "/v1/completions") and serve is not None:
            serve.log_request({"endpoint": request.url.path, "status": exc.status,
                               "error": exc.message})  # fmt: skip
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Any:
        message = {404: f"no route {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}  # fmt: skip
        error = ApiError(exc.status_code, message.get(exc.status_code, str(exc.detail)),
                         code="not_found" if exc.status_code == 404 else None)  # fmt: skip
        return JSONResponse(error.body(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Any:
        error = ApiError(422, f"invalid request: {exc.errors()[0].get('msg', '')}")
        return JSONResponse(error.body(), status_code=422)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> Any:
        say(f"error on {request.url.path}: {type(exc).__name__}: {exc}")
        error = ApiError(500, f"the server failed: {type(exc).__name__}", kind="server_error")
        return JSONResponse(error.body(), status_code=500)

    @app.get("/health")
    async def health() -> Any:
        return {
            "status": "ok",
            "run": models.run_id,
            "default_model": models.default,
            "models": models.names(),
            "loaded": models.chat.variants(),
            "device": models.chat.device,
            "busy": counters.active > 0,
            "active": counters.active,
            "requests": counters.requests,
            "uptime_s": round(time.time() - counters.started_at, 1),
        }

    @app.get("/v1/models")
    async def list_models() -> Any:
        return models_list(models.names(), int(counters.started_at), "ftui")

    @app.get("/v1/models/{name:path}")
    async def one_model(name: str) -> Any:
        models.resolve(name)
        return {"id": name, "object": "model", "created": int(counters.started_at),
                "owned_by": "ftui"}  # fmt: skip

    async def prepare(request: Request, kind: type[Any], endpoint: str) -> tuple[Any, Job]:
        arrived = time.perf_counter()
        req = parse_body(await read_body(request), kind)
        variant = models.resolve(req.model)
        stops = req.stops()
        chat = isinstance(req, ChatCompletionRequest)
        try:
            source: Any = req.chat_messages() if chat else req.prompt_text()
            # In a worker thread, even a short prompt: encoding it on the event loop instead
            # measured ~6 ms more to the first token (benchmarks/serve.py, docs/serve.md).
            inputs = await asyncio.to_thread(models.inputs, variant, source, chat)
        except ChatError as exc:
            raise ApiError(400, exc.message, param="model") from exc
        prompt_tokens, max_new = models.budget(inputs, req.max_new_tokens)
        settings = _settings(req, max_new)
        try:
            settings.validate()
        except ChatError as exc:
            raise ApiError(400, exc.message) from exc
        answer = Answer(asyncio.get_running_loop(), stops, trim_start=endpoint == "chat",
                        stream=bool(req.stream))  # fmt: skip
        job = Job(new_id("chatcmpl" if endpoint == "chat" else "cmpl"), endpoint, variant,
                  req.stream, arrived, prompt_tokens, answer)  # fmt: skip
        models.start(inputs, settings, variant, answer)
        counters.requests += 1
        counters.active += 1
        return req, job

    async def finish(job: Job) -> None:
        """Wait for the generating thread to end (a cancelled answer stops within a token or
        two), then record the request."""
        answer = job.answer
        await answer.ended()
        counters.active -= 1
        generation = answer.generation
        stats = generation.stats if generation else None
        reason = answer.finish_reason()
        record: dict[str, Any] = {
            "id": job.rid, "endpoint": job.endpoint, "model": job.variant, "stream": job.stream,
            "status": 500 if answer.error() else 200, "prompt_tokens": job.prompt_tokens,
            "completion_tokens": stats.tokens if stats else 0, "finish_reason": reason,
        }  # fmt: skip
        if generation is not None and stats is not None:
            queue_s = generation.started_at - job.arrived
            record |= {
                "queue_s": round(queue_s, 4),
                "ttft_s": round(queue_s + stats.ttft_s, 4) if stats.ttft_s is not None else None,
                "total_s": round((generation.finished_at or time.perf_counter()) - job.arrived, 4),
                "tokens_per_s": round(stats.tokens_per_s, 2) if stats.tokens_per_s else None,
            }  # fmt: skip
        if serve is not None:
            serve.log_request(record)
        if reason == "cancelled":
            say(f"{job.rid} {job.variant}: cancelled, the client disconnected after "
                f"{record['completion_tokens']} tokens")  # fmt: skip

    async def collect(request: Request, job: Job) -> str:
        """A whole answer; stops generating if the client disconnects meanwhile."""

        async def watch() -> None:
            while True:
                await asyncio.sleep(DISCONNECT_POLL_S)
                if await request.is_disconnected():
                    job.answer.cancel()
                    return

        watcher = asyncio.create_task(watch())
        try:
            return await job.answer.text()
        finally:
            watcher.cancel()

    def failed(job: Job) -> ApiError | None:
        error = job.answer.error()
        if error is None:
            return None
        from engine.chat import as_chat_error

        return ApiError(500, as_chat_error(error).message, kind="server_error")

    class AnswerResponse(StreamingResponse):
        """Server-sent events; however the response ends (done, client gone, server
        stopping), the generation stops and the request is recorded."""

        def __init__(self, events: AsyncIterator[bytes], job: Job) -> None:
            super().__init__(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})  # fmt: skip
            self.job = job

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                self.job.answer.cancel()
                await asyncio.shield(finish(self.job))

    async def events(job: Job, chat: bool, include_usage: bool) -> AsyncIterator[bytes]:
        rid, model = job.rid, job.variant
        obj = "chat.completion.chunk" if chat else "text_completion"
        if chat:
            yield sse(chat_chunk(rid, model, {"role": "assistant", "content": ""}))
        async for piece in job.answer.pieces():
            yield sse(chat_chunk(rid, model, {"content": piece}) if chat
                      else completion(rid, model, piece, None))  # fmt: skip
        error = failed(job)
        if error is not None:
            yield sse(error.body())
        else:
            await job.answer.ended()
            reason = job.answer.finish_reason()
            yield sse(chat_chunk(rid, model, {}, reason) if chat
                      else completion(rid, model, "", reason))  # fmt: skip
            if include_usage:
                stats = job.answer.generation.stats if job.answer.generation else None
                tokens = stats.tokens if stats else 0
                yield sse(usage_chunk(rid, model, obj, usage(job.prompt_tokens, tokens)))
        yield sse("[DONE]")

    async def respond(request: Request, req: Any, job: Job, chat: bool) -> Any:
        if req.stream:
            include = bool(req.stream_options and req.stream_options.include_usage)
            return AnswerResponse(events(job, chat, include), job)
        try:
            text = await collect(request, job)
        finally:
            await asyncio.shield(finish(job))
        error = failed(job)
        if error is not None:
            raise error
        stats = job.answer.generation.stats if job.answer.generation else None
        use = usage(job.prompt_tokens, stats.tokens if stats else 0)
        reason = job.answer.finish_reason()
        if chat:
            return chat_completion(job.rid, job.variant, text, reason, use)
        return completion(job.rid, job.variant, text, reason, use)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        req, job = await prepare(request, ChatCompletionRequest, "chat")
        return await respond(request, req, job, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        req, job = await prepare(request, CompletionRequest, "completions")
        return await respond(request, req, job, chat=False)

    app.state.counters = counters
    return app
