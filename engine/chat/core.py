"""The chat's vocabulary: errors, generation settings, answer measurements, conversations, and
the engine protocol the chat screen talks to (tests inject a fake engine)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from engine.errors import FtuiError

BASE = "base"  # the base model: the adapters disabled
FINAL = "final"
POLL_S = 0.05  # how often a reader waiting for text checks that its producer is still alive
ProgressCallback = Callable[[str, int, int], None]  # (stage, index from 1, number of stages)
Message = dict[str, str]


class ChatError(FtuiError):
    """Chat cannot start or an answer failed; the message names the fix."""


# -- settings and measurements --------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationSettings:
    temperature: float = 0.7  # 0: greedy
    top_p: float = 0.9
    max_new_tokens: int = 256
    repetition_penalty: float = 1.0
    seed: int | None = None  # sampling with a seed gives the same answer again
    ignore_eos: bool = False  # always generate max_new_tokens (benchmarks, tests)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def validate(self) -> GenerationSettings:
        checks = (
            ("temperature", self.temperature >= 0, "0 (greedy) or more, e.g. 0.7"),
            ("top_p", 0 < self.top_p <= 1, "a value in (0, 1], e.g. 0.9"),
            ("max_new_tokens", self.max_new_tokens >= 1, "1 or more, e.g. 256"),
            ("repetition_penalty", self.repetition_penalty > 0, "1.0 means none, e.g. 1.1"),
        )
        for name, ok, fix in checks:
            if not ok:
                raise ChatError(f"generation setting {name}={getattr(self, name)} is invalid", fix)
        return self

    def with_changes(self, **changes: Any) -> GenerationSettings:
        return replace(self, **changes).validate()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AnswerStats:
    tokens: int  # generated tokens, the end-of-turn token included
    ttft_s: float | None  # from the start of generate to the first new token
    tokens_per_s: float | None  # decoding speed after the first token
    total_s: float
    finish_reason: str  # eos, length, stopped

    @property
    def stopped(self) -> bool:
        return self.finish_reason == "stopped"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "stopped": self.stopped}

    def summary(self) -> str:
        parts = [f"{self.tokens} tokens"]
        if self.ttft_s is not None:
            parts.append(f"first token {self.ttft_s:.2f} s")
        if self.tokens_per_s is not None:
            parts.append(f"{self.tokens_per_s:,.1f} tokens/s")
        if self.finish_reason != "eos":
            parts.append({"length": "max tokens reached"}.get(self.finish_reason, "stopped"))
        return " · ".join(parts)


# -- conversations ---------------------------------------------------------------------------------


@dataclass
class Conversation:
    """A system prompt and the turns so far (what the model sees)."""

    system: str = ""
    turns: list[Message] = field(default_factory=list)

    def messages(self, prompt: str) -> list[Message]:
        head = [{"role": "system", "content": self.system}] if self.system.strip() else []
        return [*head, *self.turns, {"role": "user", "content": prompt}]

    def add(self, prompt: str, answer: str) -> None:
        self.turns += [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": answer.strip()},
        ]

    def clear(self) -> None:
        self.turns = []


def drop_oldest_turn(messages: list[Message]) -> list[Message] | None:
    """The messages without their oldest user/assistant exchange; None when none is left."""
    first = next((i for i, m in enumerate(messages) if m["role"] != "system"), None)
    if first is None or len(messages) - first < 3:
        return None
    end = first + 1
    while end < len(messages) - 1 and messages[end]["role"] != "user":
        end += 1
    return messages[:first] + messages[end:]


# -- the engine interface the TUI uses (tests inject a fake one) -------------------------------


class AnswerStream(Protocol):
    """One answer being generated: iterate for text; `stop()` from any thread."""

    def __iter__(self) -> Iterator[str]: ...

    def stop(self) -> None: ...

    @property
    def stats(self) -> AnswerStats | None: ...


class ChatEngine(Protocol):
    device: str

    def variants(self) -> list[str]: ...

    def use(self, variant: str) -> None: ...

    def stream(
        self, messages: list[Message], settings: GenerationSettings, variant: str
    ) -> AnswerStream: ...

    def close(self) -> None: ...
