"""The model side of the server: a run's checkpoints as model names on one `ChatModel` (one copy
of the base weights), prompts encoded, and answers generated in a thread and handed to the
event loop in batches.

Every answer is an `engine.chat.Generation`: it takes the chat model's lock for the whole of
`generate`, adapter selection included, so requests queue on it and never mix adapters; the
event loop only waits, so `/v1/models` and `/health` answer meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from engine.chat import BASE, ChatModel, ChatTarget, Generation, GenerationSettings, Message
from engine.chat.targets import run_checkpoints
from engine.serve.protocol import ApiError, StopScanner

BATCH_S = 0.05  # the event loop is woken at most 20 times a second per answer (first piece at once)
END_POLL_S = (0.0005, 0.001, 0.002, 0.005)  # waits for a generating thread that just ended
DEFAULT_MAX_TOKENS = 256  # without max_tokens and a known context: what `ftui chat` uses


class ServedModels:
    """The names a client may ask for: the default checkpoint (also as the run's id), every
    other checkpoint of the run (loaded as an adapter on first use, new ones included), and
    `base`. A full fine-tune serves its one checkpoint."""

    def __init__(self, chat: ChatModel, target: ChatTarget) -> None:
        self.chat = chat
        self.target = target
        self.default = target.primary
        self.run_id = target.run.run_id if target.run else None
        self._loading = threading.Lock()  # one adapter load at a time

    def names(self) -> list[str]:
        if not self.chat.adapters or self.target.run is None:
            return self.chat.variants()
        others = [n for n in run_checkpoints(self.target.run) if n != self.default]
        return [self.default, *others, BASE]

    def resolve(self, name: str) -> str:
        """The variant a model name stands for (the run id: the default); 404 when unknown."""
        if name == self.run_id:
            return self.default
        if name in self.names():
            return name
        raise ApiError(
            404,
            f"the model {name!r} does not exist; this server has: {', '.join(self.names())}",
            param="model",
            code="model_not_found",
        )

    def load(self, variant: str) -> None:
        """Put a checkpoint on the base if it is not yet (blocks: call it in a thread)."""
        if variant in self.chat.variants():
            return
        with self._loading:
            self.chat.use(variant)

    # -- prompts ---------------------------------------------------------------------------------
    def chat_inputs(self, messages: list[Message]) -> Any:
        return self.chat.render(messages)

    def text_inputs(self, prompt: str) -> Any:
        return self.chat.tokenizer(prompt, return_tensors="pt")

    def inputs(self, variant: str, source: Any, chat: bool) -> Any:
        """Load `variant` if it is not yet, then encode the prompt (call it in a worker
        thread: one hand-off per request, not one per step)."""
        self.load(variant)
        return self.chat_inputs(source) if chat else self.text_inputs(source)

    def budget(self, inputs: Any, requested: int | None) -> tuple[int, int]:
        """(prompt tokens, new tokens allowed): 400 when the prompt and `requested` exceed the
        context; without a request, the room left (256 when the context is unknown)."""
        prompt = int(inputs["input_ids"].shape[-1])
        limit = self.chat.context_limit()
        if limit is None:
            return prompt, requested or DEFAULT_MAX_TOKENS
        room = limit - prompt
        if requested is None and room >= 1:
            return prompt, room
        if requested is not None and requested <= room:
            return prompt, requested
        asked = f" and max_tokens={requested}" if requested is not None else ""
        raise ApiError(
            400,
            f"this model's context is {limit} tokens; the prompt is {prompt} tokens{asked}",
            param="max_tokens" if requested is not None else "messages",
            code="context_length_exceeded",
        )

    def start(
        self,
        inputs: Any,
        settings: GenerationSettings,
        variant: str,
        answer: Answer,
    ) -> Generation:
        generation = Generation(self.chat, inputs, settings.validate(), variant,
                                on_text=answer.on_text, on_end=answer.on_end)  # fmt: skip
        answer.generation = generation
        return generation.start()


class Answer:
    """One answer crossing from the generating thread to the event loop. The thread hands on
    text (cut at stop sequences); for a stream it wakes the loop for the first piece, then at
    most every BATCH_S, and at the end; for a whole answer only at the end. Every wake costs
    `generate` the interpreter lock for a while (a wake per token would cost it per token;
    docs/serve.md)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        stops: list[str],
        trim_start: bool,
        stream: bool = True,
    ):
        self.loop = loop
        self.stream = stream
        self.scanner = StopScanner(stops, trim_start=trim_start)
        self.generation: Generation | None = None
        self.done = False
        self.cancelled = False
        self.first_text_at: float | None = None
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._wake_pending = False
        self._woken_at = 0.0
        self._event = asyncio.Event()

    # -- the generating thread -------------------------------------------------------------------
    def on_text(self, text: str) -> None:
        out = self.scanner.feed(text)
        if self.scanner.hit and self.generation is not None:
            self.generation.stop()
        if out:
            with self._lock:
                self._pending.append(out)
            now = time.perf_counter()
            if self.first_text_at is None:
                self.first_text_at = now
            if self.stream and now - self._woken_at >= BATCH_S:
                self._woken_at = now
                self._wake()

    def on_end(self) -> None:
        rest = self.scanner.flush()
        with self._lock:
            if rest:
                self._pending.append(rest)
            self.done = True
        self._wake()

    def _wake(self) -> None:
        with self._lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        with contextlib.suppress(RuntimeError):  # the loop closed: the server is stopping
            self.loop.call_soon_threadsafe(self._event.set)

    # -- the event loop ----------------------------------------------------------------------------
    async def pieces(self) -> AsyncIterator[str]:
        """The text as it comes, in batches, until the answer ended (at once when it has;
        read it once for the text, again to wait for the end)."""
        while True:
            with self._lock:
                self._wake_pending = False
                text = "".join(self._pending)
                self._pending.clear()
                done = self.done
            if text:
                yield text
            if done:
                return
            await self._event.wait()
            self._event.clear()

    async def ended(self) -> None:
        """Wait for the generating thread to end (its stats exist then; a cancelled answer
        ends within a token or two)."""
        async for _ in self.pieces():
            pass
        generation = self.generation
        if generation is None:
            return
        # The thread told its end from its last lines: it is gone within a moment. Short sleeps
        # let it finish (they release the interpreter lock) without a worker-thread hand-off.
        for delay in END_POLL_S:
            if generation.stats is not None:
                return
            await asyncio.sleep(delay)
        if generation.stats is None:
            await asyncio.to_thread(_join, generation)

    async def text(self) -> str:
        return "".join([piece async for piece in self.pieces()])

    def cancel(self) -> None:
        """The client went away: stop generating (within a token or two)."""
        if not self.done:
            self.cancelled = True
        if self.generation is not None:
            self.generation.stop()

    def finish_reason(self) -> str:
        """stop, length or cancelled (what the request log records)."""
        if self.cancelled:
            return "cancelled"
        stats = self.generation.stats if self.generation else None
        if stats is not None and stats.finish_reason == "length" and not self.scanner.hit:
            return "length"
        return "stop"

    def error(self) -> BaseException | None:
        return self.generation.error if self.generation else None


def _join(generation: Generation) -> None:
    with contextlib.suppress(Exception):  # its error is read from `generation.error`
        generation.wait()
