"""Chat history: each session as JSONL in the run's `chats/` (or ftui's home outside a run),
and its Markdown transcript."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

from engine.chat.core import AnswerStats, ChatError, GenerationSettings
from engine.chat.targets import ChatTarget
from engine.run.rundir import RunDir, append_jsonl


def chats_dir(run: RunDir | None) -> Path:
    if run is not None:
        return run.path / "chats"
    from engine.paths import ftui_home

    return ftui_home() / "chats"


class ChatLog:
    """One chat session as JSONL: a `session` header, then one `turn` per answer. The file is
    created with the first answer, so opening and closing a chat leaves nothing behind."""

    def __init__(self, directory: Path, header: dict[str, Any]) -> None:
        self.session_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        self.path = directory / f"{self.session_id}.jsonl"
        self.header = {"type": "session", "session": self.session_id, "t": time.time(), **header}
        self.turns = 0

    def record(
        self,
        *,
        exchange: int,
        column: int,
        variant: str,
        prompt: str,
        answer: str,
        system: str,
        settings: GenerationSettings,
        stats: AnswerStats | None,
        error: str | None = None,
    ) -> None:
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            append_jsonl(self.path, self.header)
        record = {
            "type": "turn", "t": time.time(), "exchange": exchange, "column": column,
            "variant": variant, "system": system, "prompt": prompt, "answer": answer.strip(),
            "settings": settings.to_dict(), "stats": stats.to_dict() if stats else None,
        }  # fmt: skip
        if error:
            record["error"] = error
        append_jsonl(self.path, record)
        self.turns += 1

    def write_transcript(self) -> Path:
        """The session as Markdown next to its JSONL; returns its path."""
        if not self.path.exists():
            raise ChatError("nothing to export yet", "ask something first")
        out = self.path.with_suffix(".md")
        out.write_text(transcript_markdown(read_chat(self.path)), encoding="utf-8")
        return out


def read_chat(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a partial last line
        if isinstance(record, dict):
            records.append(record)
    return records


def transcript_markdown(records: list[dict[str, Any]]) -> str:
    header = next((r for r in records if r.get("type") == "session"), {})
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(header.get("t", time.time())))
    lines = [f"# Chat with {header.get('label', 'a model')}", ""]
    lines += [f"- session {header.get('session', '?')}, started {when}"]
    if header.get("base_model"):
        lines.append(f"- base model: `{header['base_model']}`")
    lines.append("")
    system = None
    exchange = None
    for record in records:
        if record.get("type") != "turn":
            continue
        if record.get("system") and record["system"] != system:
            system = record["system"]
            lines += ["> **System:** " + system.replace("\n", "\n> "), ""]
        if record.get("exchange") != exchange:
            exchange = record.get("exchange")
            lines += [f"## {record['prompt'].splitlines()[0][:80] if record['prompt'] else '…'}",
                      "", "**You:**", "", record["prompt"], ""]  # fmt: skip
        lines += [f"**{record['variant']}:**", "", record["answer"] or "_(no text)_", ""]
        stats = record.get("stats")
        if stats:
            lines += [f"_{AnswerStats(**_stat_fields(stats)).summary()}_", ""]
        if record.get("error"):
            lines += [f"_error: {record['error']}_", ""]
    return "\n".join(lines).rstrip() + "\n"


def _stat_fields(stats: dict[str, Any]) -> dict[str, Any]:
    names = ("tokens", "ttft_s", "tokens_per_s", "total_s", "finish_reason")
    return {name: stats.get(name) for name in names}


def session_header(target: ChatTarget) -> dict[str, Any]:
    return {
        "label": target.label,
        "run_id": target.run.run_id if target.run else None,
        "base_model": target.base_model,
        "adapters": {a.name: str(a.path) for a in target.adapters},
        "compare": target.compare,
    }
