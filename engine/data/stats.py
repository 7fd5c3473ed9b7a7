"""Token-length statistics of a dataset, cheap enough for the planner's start-up path.

Without a tokenizer (the planner must not import transformers) lengths are estimated from
characters: ~3.7 characters per token for English text with Llama/Qwen-class BPE
vocabularies. `ftui data check --model M` measures with the real tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import FtuiError

CHARS_PER_TOKEN = 3.7
TEMPLATE_TOKENS = 12  # role markers of a chat template per turn


@dataclass(frozen=True)
class LengthStats:
    records: int
    total_tokens: int
    p50: int
    p90: int
    p99: int
    max: int
    estimated: bool  # True when lengths come from characters, not a tokenizer

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "total_tokens": self.total_tokens,
            "p50": self.p50,
            "p90": self.p90,
            "p99": self.p99,
            "max": self.max,
            "estimated": self.estimated,
        }


def _text_chars(value: Any) -> tuple[int, int]:
    """(characters, turns) of every string in a record."""
    if isinstance(value, str):
        return len(value), 0
    if isinstance(value, dict):
        chars = turns = 0
        for item in value.values():
            c, t = _text_chars(item)
            chars, turns = chars + c, turns + t
        return chars, turns + 1
    if isinstance(value, list):
        chars = turns = 0
        for item in value:
            c, t = _text_chars(item)
            chars, turns = chars + c, turns + t
        return chars, turns
    return 0, 0


def _records(path: Path) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FtuiError(
            f"cannot read dataset {path}: {exc}", "pass a UTF-8 JSON/JSONL file"
        ) from exc
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FtuiError(
                f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
                f"run `ftui data check {path}` for a full report",
            ) from exc
        return list(data)
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise FtuiError(
                f"{path} line {number} is not valid JSON ({exc.msg})",
                f"run `ftui data check {path}` for every invalid record",
            ) from exc
    return records


def estimate_lengths(path: Path) -> tuple[LengthStats, list[int]]:
    """Token lengths per record, estimated from characters."""
    if not path.is_file():
        raise FtuiError(f"dataset {path} does not exist", "pass the path of a JSON or JSONL file")
    records = _records(path)
    if not records:
        raise FtuiError(f"dataset {path} has no records", "pass a dataset with at least one record")
    lengths = []
    for record in records:
        chars, turns = _text_chars(record)
        lengths.append(max(1, round(chars / CHARS_PER_TOKEN) + TEMPLATE_TOKENS * max(turns, 1)))
    ordered = sorted(lengths)

    def pct(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]

    stats = LengthStats(
        records=len(lengths),
        total_tokens=sum(lengths),
        p50=pct(0.5),
        p90=pct(0.9),
        p99=pct(0.99),
        max=ordered[-1],
        estimated=True,
    )
    return stats, lengths
