"""The chat worker: the model in a process of its own.

A terminal UI and `generate` share one interpreter's GIL: every screen refresh (tens of
milliseconds of Python) is time the generation thread waits, which halves the speed of a
small model. The chat screen therefore runs the model in a worker process
(`python -m engine.chat.worker`), speaking JSON lines: requests on its stdin, events on its
stdout. The worker exits when its stdin closes, so it never outlives the app, and the GPU
memory it held is freed with it.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from engine.chat.core import (
    POLL_S,
    AnswerStats,
    ChatError,
    GenerationSettings,
    Message,
    ProgressCallback,
)
from engine.chat.model import ChatModel, Generation, as_chat_error
from engine.chat.targets import ChatTarget, target_from_dict, target_to_dict
from engine.errors import FtuiError

BATCH_S = 0.05  # text events at most 20 times a second per answer: half the screen's redraw rate


class ChunkBatcher:
    """An answer's text, handed over by the generating thread (`add`) and read by the thread
    that writes events (`batches`): the first piece at once, then what gathered, at most once
    per `interval`; the end cuts the wait short. Fewer, larger events cost both processes less
    per token than one JSON line per token. `add` wakes the writer only when it waits for text,
    not on every token while it lets text gather."""

    def __init__(self, interval: float = BATCH_S) -> None:
        self.interval = interval
        self._ready = threading.Condition()
        self._pending: list[str] = []
        self._ended = False
        self._idle = False  # the writer waits for the next text

    def add(self, text: str) -> None:
        with self._ready:
            self._pending.append(text)
            if self._idle:
                self._ready.notify()

    def end(self) -> None:
        with self._ready:
            self._ended = True
            self._ready.notify()

    def batches(self) -> Iterator[str]:
        """Batches of text until `end()`; the last one is sent as soon as the answer ended."""
        last = float("-inf")
        while True:
            with self._ready:
                self._idle = True
                self._ready.wait_for(lambda: bool(self._pending) or self._ended)
                self._idle = False
                delay = last + self.interval - time.perf_counter()
                if delay > 0:  # let more text gather, unless the answer ends meanwhile
                    self._ready.wait_for(lambda: self._ended, timeout=delay)
                text, ended = "".join(self._pending), self._ended
                self._pending.clear()
            if text:
                yield text
                last = time.perf_counter()
            if ended:
                return


def serve_worker(requests: Any, events: Any) -> int:
    """The worker's loop: load, use, stream, stop, close. Answers write their text from the
    generating thread; this loop keeps reading, so a `stop` is handled while one streams."""
    write_lock = threading.Lock()

    def emit(**event: Any) -> None:
        with write_lock:
            events.write(json.dumps(event) + "\n")
            events.flush()

    def error(request_id: Any, failure: BaseException, doing: str = "generation") -> None:
        if not isinstance(failure, FtuiError):
            failure = as_chat_error(failure, doing)
        emit(event="error", id=request_id, message=failure.message, fix=failure.fix)

    def progress(request_id: Any) -> ProgressCallback:
        return lambda stage, i, n: emit(event="progress", id=request_id, stage=stage, i=i, n=n)

    def finish(request_id: Any, generation: Generation, text: ChunkBatcher) -> None:
        try:
            for batch in text.batches():
                emit(event="chunk", id=request_id, text=batch)
            emit(event="end", id=request_id, stats=asdict(generation.wait()))
        except BaseException as failure:
            error(request_id, failure)
        finally:
            answers.pop(request_id, None)

    model: ChatModel | None = None
    answers: dict[Any, Generation] = {}
    for line in requests:
        try:
            request = json.loads(line)
        except json.JSONDecodeError:
            continue
        op, request_id = request.get("op"), request.get("id")
        try:
            if op == "load":
                model = ChatModel.load(target_from_dict(request["target"]), progress(request_id))
                emit(event="reply", id=request_id, device=model.device, variants=model.variants())
            elif op == "close":
                break
            elif model is None:
                raise ChatError("the chat worker has no model yet", "send load first")
            elif op == "use":
                model.use(request["variant"])
                emit(event="reply", id=request_id, variants=model.variants())
            elif op == "stream":
                settings = GenerationSettings(**request["settings"])
                text = ChunkBatcher()
                generation = model.stream(request["messages"], settings, request["variant"],
                                          on_text=text.add, on_end=text.end)  # fmt: skip
                answers[request_id] = generation
                threading.Thread(
                    target=finish, args=(request_id, generation, text), daemon=True
                ).start()
            elif op == "stop" and request.get("answer") in answers:
                answers.pop(request["answer"]).stop()
        except BaseException as failure:
            error(request_id, failure, "generation" if op == "stream" else f"chat worker {op}")
    for generation in list(answers.values()):
        generation.stop()
    return 0


class WorkerAnswer:
    """An answer streamed by the worker process (the same contract as `Generation`)."""

    def __init__(self, worker: ChatWorker, answer_id: int) -> None:
        self.worker = worker
        self.id = answer_id
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.chunks: list[str] = []
        self._stats: AnswerStats | None = None

    def __iter__(self) -> Iterator[str]:
        while True:
            try:
                event = self.events.get(timeout=POLL_S)
            except queue.Empty:
                if not self.worker.alive():
                    raise self.worker.died() from None
                continue
            kind = event["event"]
            if kind == "chunk":
                self.chunks.append(event["text"])
                yield event["text"]
            elif kind == "end":
                self._stats = AnswerStats(**event["stats"]) if event["stats"] else None
                return
            elif kind == "error":
                raise ChatError(event["message"], event.get("fix"))

    def stop(self) -> None:
        self.worker.send(op="stop", answer=self.id)

    @property
    def stats(self) -> AnswerStats | None:
        return self._stats

    @property
    def text(self) -> str:
        return "".join(self.chunks)


class ChatWorker:
    """A `ChatEngine` whose model lives in a worker process (see `serve_worker`)."""

    def __init__(self, process: Any) -> None:
        self.process = process
        self.device = "?"
        self._variants: list[str] = []
        self._ids = iter(range(1, 1 << 62))
        self._routes: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._stderr: list[str] = []
        self._send_lock = threading.Lock()
        threading.Thread(target=self._read_events, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    @classmethod
    def start(cls, target: ChatTarget, progress: ProgressCallback | None = None) -> ChatWorker:
        import subprocess
        import sys

        from engine.paths import child_env

        env = child_env({"TRANSFORMERS_VERBOSITY": "error"})
        process = subprocess.Popen(
            [sys.executable, "-m", "engine.chat.worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1, env=env, close_fds=True,
        )  # fmt: skip
        worker = cls(process)
        try:
            reply = worker.request(progress, op="load", target=target_to_dict(target))
        except BaseException:
            worker.close()
            raise
        worker.device, worker._variants = reply["device"], list(reply["variants"])
        return worker

    # -- plumbing --------------------------------------------------------------------------------
    def alive(self) -> bool:
        return bool(self.process.poll() is None)

    def died(self) -> ChatError:
        tail = " | ".join(line.strip() for line in self._stderr[-3:] if line.strip())
        return ChatError(
            f"the chat worker stopped (exit code {self.process.poll()})"
            + (f": {tail}" if tail else ""),
            "reopen the chat; if it keeps failing, try `ftui chat RUN --prompt hi`",
        )

    def send(self, **request: Any) -> None:
        with self._send_lock:
            if not self.alive():
                return
            try:
                self.process.stdin.write(json.dumps(request) + "\n")
                self.process.stdin.flush()
            except (BrokenPipeError, OSError):
                pass

    def _read_events(self) -> None:
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a library printed to stdout
            route = self._routes.get(event.get("id"))
            if route is not None:
                route.put(event)
                if event["event"] in ("end", "error", "reply"):
                    self._routes.pop(event["id"], None)

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self._stderr = [*self._stderr[-49:], line]

    def request(self, progress: ProgressCallback | None = None, **request: Any) -> dict[str, Any]:
        """Send a request and wait for its reply (load, use), forwarding progress events."""
        request_id = next(self._ids)
        route: queue.Queue[dict[str, Any]] = queue.Queue()
        self._routes[request_id] = route
        self.send(id=request_id, **request)
        while True:
            try:
                event = route.get(timeout=POLL_S * 4)
            except queue.Empty:
                if not self.alive():
                    raise self.died() from None
                continue
            if event["event"] == "progress" and progress is not None:
                progress(event["stage"], event["i"], event["n"])
            elif event["event"] == "error":
                raise ChatError(event["message"], event.get("fix"))
            elif event["event"] == "reply":
                return event

    # -- ChatEngine ------------------------------------------------------------------------------
    def variants(self) -> list[str]:
        return list(self._variants)

    def use(self, variant: str) -> None:
        if variant not in self._variants:
            self._variants = list(self.request(op="use", variant=variant)["variants"])

    def stream(
        self, messages: list[Message], settings: GenerationSettings, variant: str
    ) -> WorkerAnswer:
        settings.validate()
        answer = WorkerAnswer(self, next(self._ids))
        self._routes[answer.id] = answer.events
        self.send(op="stream", id=answer.id, messages=messages, settings=settings.to_dict(),
                  variant=variant)  # fmt: skip
        return answer

    def close(self) -> None:
        import subprocess

        self.send(op="close")
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _main(argv: list[str] | None = None) -> int:
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args:
        sys.stderr.write("usage: python -m engine.chat.worker (the chat screen starts it)\n")
        return 2
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    events = sys.stdout
    sys.stdout = sys.stderr  # library prints must not corrupt the event stream
    return serve_worker(sys.stdin, events)


if __name__ == "__main__":
    raise SystemExit(_main())
