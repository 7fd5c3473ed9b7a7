"""What the checkpoints answer: a prompts file, or held-out samples of the run's data.

A prompts file is plain text (one prompt per line, no reference) or a dataset in any format
ftui reads: each conversation up to its last assistant turn is the prompt, that turn the
reference. Held-out samples are the first N conversations of the run's eval split, found by
encoding samples exactly as training did (`engine.data.encode_conversation`) and matching them
to the split's rows, so they are the very samples the eval loss is measured on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.chat import Message
from engine.errors import FtuiError

TEXT_SUFFIXES = (".txt", ".text")


@dataclass(frozen=True)
class Prompt:
    messages: list[Message]  # what the model is given (ends with a user turn)
    reference: str | None  # the expected answer, when the source has one
    source: str  # where it came from: file:line, or the split

    @property
    def text(self) -> str:
        """The last user turn: what a reader of the generations file wants to see."""
        users = [m["content"] for m in self.messages if m["role"] == "user"]
        return users[-1] if users else self.messages[-1]["content"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.text,
            "messages": self.messages,
            "reference": self.reference,
            "source": self.source,
        }


def _from_turns(turns: list[dict[str, str]], source: str) -> Prompt | None:
    last = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=None)
    if last is None:
        return Prompt(list(turns), None, source) if turns else None
    if last == 0:
        return None
    messages = [dict(t) for t in turns[:last]]
    return Prompt(messages, turns[last]["content"].strip(), source)


def read_prompts(path: str | Path) -> list[Prompt]:
    """The prompts of a file; an unreadable or empty file is one EvalError-like FtuiError."""
    from engine.data import load_samples

    path = Path(path)
    if path.suffix.lower() in TEXT_SUFFIXES:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise FtuiError(
                f"cannot read the prompts file {path}: {exc}",
                "give a UTF-8 text file, one prompt per line",
            ) from None
        prompts = [
            Prompt([{"role": "user", "content": line.strip()}], None, f"{path.name}:{number}")
            for number, line in enumerate(lines, start=1)
            if line.strip()
        ]
    else:
        loaded = load_samples(path)
        if loaded.format == "text":
            raise FtuiError(
                f"the prompts file {path} holds plain text documents, not prompts",
                "use a .txt file with one prompt per line, or a chat/instruction dataset",
            )
        prompts = []
        for sample in loaded.samples:
            prompt = _from_turns(sample.turns, f"{Path(sample.file).name}:{sample.where}")
            if prompt is not None:
                prompts.append(prompt)
    if not prompts:
        raise FtuiError(f"the prompts file {path} holds no prompt", "add at least one prompt")
    return prompts


def heldout_prompts(
    data: str,
    tokenizer: Any,
    rows: list[list[int]] | None,
    *,
    count: int,
    fmt: str,
    seq_len: int,
) -> list[Prompt]:
    """The first `count` samples of `data` whose training encoding is one of `rows` (the
    eval split's input ids); with `rows` None, the first `count` samples."""
    if count <= 0:
        return []
    from engine.data import InvalidRecordError, encode_conversation, load_samples

    loaded = load_samples(data, fmt=fmt)
    if loaded.format in ("text", "preference"):
        return []  # documents have no answer to compare; pairs are not trained on yet
    wanted = {tuple(r) for r in rows} if rows is not None else None
    label = "eval split" if rows is not None else "training data"
    found: list[Prompt] = []
    for sample in loaded.samples:
        if wanted is not None:
            try:
                encoded = encode_conversation(sample.turns, tokenizer).truncate(seq_len)
            except InvalidRecordError:
                continue
            if tuple(encoded["input_ids"]) not in wanted:
                continue
        prompt = _from_turns(sample.turns, f"{label}, {Path(sample.file).name}:{sample.where}")
        if prompt is not None and prompt.reference is not None:
            found.append(prompt)
        if len(found) >= count:
            break
    return found
