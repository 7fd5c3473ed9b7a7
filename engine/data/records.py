"""engine.data.records: one part of `engine.data` (see the package docstring)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import FtuiError

FORMATS = ("alpaca", "sharegpt", "messages", "text", "preference", "kto")


FORMAT_ALIASES = {
    "openai": "messages",
    "chatml": "messages",
    "pretrain": "text",
    "pretraining": "text",
    "dpo": "preference",
    "pairs": "preference",
    "unpaired": "kto",
}


MODES = ("sft", "pretrain", "auto")


ROLES = ("system", "user", "assistant", "tool")


IGNORE_INDEX = -100


HISTOGRAM_BUCKETS = 10


JSON_SUFFIXES = (".json", ".jsonl", ".ndjson")


CSV_SUFFIXES = (".csv", ".tsv")


PARQUET_SUFFIXES = (".parquet", ".pq")


SUPPORTED_SUFFIXES = JSON_SUFFIXES + CSV_SUFFIXES + PARQUET_SUFFIXES


TOOLS_PREAMBLE = "You can call these tools:"


FALLBACK_CHAT_TEMPLATE = (
    "{% if bos_token and bos_token != eos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '### System:\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### User:\\n' }}"
    "{% elif message['role'] == 'tool' %}{{ '### Tool:\\n' }}"
    "{% else %}{{ '### Assistant:\\n' }}{% endif %}"
    "{{ message['content'] }}"
    "{% if message['role'] == 'assistant' and eos_token %}{{ eos_token }}{% endif %}"
    "{{ '\\n\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\\n' }}{% endif %}"
)


_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}


_MESSAGES_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "model": "assistant",
    "tool": "tool",
    "function": "tool",
    "ipython": "tool",
}


_JSON_CELL_FIELDS = frozenset(
    {"conversations", "messages", "history", "tools", "chosen", "rejected", "prompt", "completion"}
)


_REQUIRED_COLUMNS: dict[str, tuple[tuple[str, ...], ...]] = {
    "alpaca": (("instruction", "output"), ("input", "output")),
    "sharegpt": (("conversations",),),
    "messages": (("messages",),),
    "text": (("text",),),
    "preference": (("chosen", "rejected"),),
    "kto": (("completion", "label"),),
}


_FORMAT_HELP = (
    "Alpaca (instruction/input/output), ShareGPT (conversations), OpenAI messages (messages), "
    "plain text (text), preference pairs (chosen/rejected) or KTO's unpaired "
    "prompt/completion/label"
)


Turn = dict[str, str]


class DatasetUnusableError(FtuiError):
    """A dataset file that cannot be read as a whole (empty, binary, not UTF-8, broken JSON...)."""

    def __init__(
        self,
        path: Path | str,
        problem: str,
        fix: str,
        *,
        line: int | None = None,
        column: int | None = None,
        offset: int | None = None,
    ) -> None:
        where = []
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column {column}")
        if offset is not None:
            where.append(f"byte offset {offset}")
        position = f" ({', '.join(where)})" if where else ""
        super().__init__(f"dataset {path} is unusable: {problem}{position}", fix)
        self.path = str(path)
        self.problem = problem
        self.line = line
        self.column = column
        self.offset = offset


class InvalidRecordError(ValueError):
    """One record that cannot be used; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class RawRecord:
    """One record as read from a file, before any validation."""

    value: Any
    index: int  # 0-based across the whole dataset
    line: int | None  # 1-based line where it starts (None for Parquet)
    file: str  # the file's name (relative to the dataset folder)
    row: int  # 1-based record number within its file
    error: str | None = None  # set when the record could not even be parsed (a bad JSONL line)
    where: str = ""  # "line 12", "record 5 (line 40)" in a JSON array, "row 3" in Parquet


@dataclass(frozen=True)
class InvalidRecord:
    index: int
    line: int | None
    file: str
    row: int
    reason: str
    where: str = ""

    @property
    def location(self) -> str:
        if self.where:
            return self.where
        return f"row {self.row}" if self.line is None else f"line {self.line}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "row": self.row,
            "index": self.index,
            "file": self.file,
            "location": self.location,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Sample:
    """A valid record, normalised."""

    index: int
    line: int | None
    file: str
    row: int
    turns: list[Turn] = field(default_factory=list)  # chat formats; preference: the prompt
    text: str | None = None  # text format
    chosen: list[Turn] | None = None  # preference format
    rejected: list[Turn] | None = None
    where: str = ""
    completion: list[Turn] | None = None  # kto format: one answer to the prompt in `turns`
    label: bool | None = None  # kto format: whether the completion is desirable

    def invalid(self, reason: str) -> InvalidRecord:
        """This sample refused after all (it does not fit the tokenizer or the template)."""
        return InvalidRecord(self.index, self.line, self.file, self.row, reason, self.where)

    def key(self) -> str:
        """Identity for duplicate counting."""
        if self.text is not None:
            return self.text
        return json.dumps(
            [self.turns, self.chosen, self.rejected, self.completion, self.label],
            ensure_ascii=False,
        )

    def chars(self) -> tuple[int, int]:
        """(characters, turns) of the longest sequence this sample trains on."""
        if self.text is not None:
            return len(self.text), 0
        base = sum(len(t["content"]) for t in self.turns)
        extra = [self.chosen or [], self.rejected or [], self.completion or []]
        longest = max(extra, key=lambda ts: sum(len(t["content"]) for t in ts))
        return base + sum(len(t["content"]) for t in longest), len(self.turns) + len(longest)


@dataclass(frozen=True)
class LengthSummary:
    p50: int
    p90: int
    p95: int
    p99: int
    max: int
    mean: float
    total: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "p50": self.p50,
            "p90": self.p90,
            "p95": self.p95,
            "p99": self.p99,
            "max": self.max,
            "mean": round(self.mean, 1),
            "total": self.total,
        }


@dataclass
class DataReport:
    path: str
    format: str
    records: int
    valid: int
    invalid: list[InvalidRecord]
    empty: int
    duplicates: int
    lengths: LengthSummary | None
    estimated: bool  # lengths estimated from character classes (engine.data.tokens)
    histogram: list[dict[str, int]]
    seq_len: int | None
    truncated: int
    truncated_share: float | None  # None without seq_len
    files: list[str] = field(default_factory=list)
    template: str | None = None  # "chat" (tokenizer's own), "fallback", None (no tokenizer)
    tokenizer: str | None = None
    longest: dict[str, Any] | None = None  # {"line", "row", "file", "tokens"}
    notes: list[str] = field(default_factory=list)
    mode: str | None = None  # set by build_datasets
    train_rows: int | None = None
    eval_rows: int | None = None
    no_labels: int = 0  # SFT samples left without an answer token after truncation (dropped)
    total_range: tuple[int, int] | None = None  # the estimate's low-high total (None: measured)
    skipped: list[str] = field(default_factory=list)  # files in a folder that are not data
    # preference and kto data: pairs, identical pairs, long prompts, truncation of each side
    preference: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.invalid

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "files": self.files,
            "format": self.format,
            "records": self.records,
            "valid": self.valid,
            "invalid_count": len(self.invalid),
            "invalid": [item.to_dict() for item in self.invalid],
            "empty": self.empty,
            "duplicates": self.duplicates,
            "lengths": self.lengths.to_dict() if self.lengths else None,
            "estimated": self.estimated,
            "counted_by": (
                "estimate from character classes" if self.estimated else f"{self.tokenizer}"
            ),
            "total_range": list(self.total_range) if self.total_range else None,
            "histogram": self.histogram,
            "seq_len": self.seq_len,
            "truncated": self.truncated,
            "truncated_share": self.truncated_share,
            "template": self.template,
            "tokenizer": self.tokenizer,
            "longest": self.longest,
            "notes": self.notes,
            "mode": self.mode,
            "train_rows": self.train_rows,
            "eval_rows": self.eval_rows,
            "no_labels": self.no_labels,
            "skipped": self.skipped,
            "preference": self.preference,
        }


def _normalise_format(fmt: str) -> str:
    name = (fmt or "auto").strip().lower()
    name = FORMAT_ALIASES.get(name, name)
    if name != "auto" and name not in FORMATS:
        raise FtuiError(
            f"unknown dataset format {fmt!r}",
            f"use one of: auto, {', '.join(FORMATS)} (aliases: {', '.join(FORMAT_ALIASES)})",
        )
    return name
