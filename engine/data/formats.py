"""engine.data.formats: one part of `engine.data` (see the package docstring)."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.data.readers import (
    _type_name,
    read_dataset,
)
from engine.data.records import (
    _FORMAT_HELP,
    _MESSAGES_ROLES,
    _SHAREGPT_ROLES,
    FORMATS,
    TOOLS_PREAMBLE,
    DatasetUnusableError,
    InvalidRecord,
    InvalidRecordError,
    Sample,
    Turn,
    _normalise_format,
)
from engine.errors import FtuiError


def classify_record(value: Any) -> str | None:
    """The format a single record looks like, from its fields (None: not recognisable)."""
    if not isinstance(value, dict):
        return None
    if "chosen" in value and "rejected" in value:
        return "preference"
    if "completion" in value and "label" in value:
        return "kto"
    if "conversations" in value:
        return "sharegpt"
    if "messages" in value:
        return "messages"
    if "instruction" in value or "output" in value:
        return "alpaca"
    if "text" in value:
        return "text"
    return None


def detect_format(values: Iterable[Any]) -> str | None:
    """The format most records look like; ties go to the one seen first."""
    counts: Counter[str] = Counter()
    order: dict[str, int] = {}
    for value in values:
        kind = classify_record(value)
        if kind is not None:
            counts[kind] += 1
            order.setdefault(kind, len(order))
    if not counts:
        return None
    return max(counts, key=lambda k: (counts[k], -order[k]))


def _get_str(record: dict[str, Any], key: str, *, required: bool) -> str:
    value = record.get(key)
    if value is None:
        if required:
            raise InvalidRecordError(f"missing field {key!r}")
        return ""
    if not isinstance(value, str):
        raise InvalidRecordError(f"field {key!r} must be a string, got {_type_name(value)}")
    return value


def _tools_text(tools: Any) -> str | None:
    if tools is None:
        return None
    if isinstance(tools, str):
        raw = tools.strip()
        if not raw:
            return None
        try:
            parsed: Any = json.loads(raw)
        except json.JSONDecodeError:
            return f"{TOOLS_PREAMBLE}\n{raw}"
    elif isinstance(tools, (list, dict)):
        parsed = tools
    else:
        raise InvalidRecordError(
            f"field 'tools' must be a string or a list, got {_type_name(tools)}"
        )
    if not parsed:
        return None
    return f"{TOOLS_PREAMBLE}\n{json.dumps(parsed, ensure_ascii=False)}"


def _with_system(turns: list[Turn], system: str, tools: Any) -> list[Turn]:
    """Put the system text (and tool definitions) in one leading system turn."""
    parts = [system.strip()] if system.strip() else []
    if turns and turns[0]["role"] == "system":
        if turns[0]["content"].strip():
            parts.insert(0, turns[0]["content"].strip())
        turns = turns[1:]
    tools_text = _tools_text(tools)
    if tools_text:
        parts.append(tools_text)
    return ([{"role": "system", "content": "\n\n".join(parts)}] if parts else []) + turns


def _check_turns(turns: list[Turn], *, alternate: bool, what: str) -> None:
    """Shared checks: system first only, no empty turn, an answer, alternation if required."""
    if not turns or all(not t["content"].strip() for t in turns):
        raise InvalidRecordError("empty sample: every turn is blank")
    for position, turn in enumerate(turns, start=1):
        if turn["role"] == "system" and position != 1:
            raise InvalidRecordError(f"{what} {position} is a system turn: only the first may be")
        if turn["role"] != "system" and not turn["content"].strip():
            raise InvalidRecordError(f"{what} {position} ({turn['role']}) is empty")
    if not any(t["role"] == "assistant" for t in turns):
        raise InvalidRecordError("no assistant turn: nothing to learn")
    if alternate:
        body = [t for t in turns if t["role"] != "system"]
        for position, turn in enumerate(body):
            answer = turn["role"] == "assistant"
            if answer != (position % 2 == 1):
                offset = len(turns) - len(body)
                expected = "an assistant" if position % 2 else "a user or tool"
                raise InvalidRecordError(
                    f"turns do not alternate: {what} {position + 1 + offset} is "
                    f"{turn['role']}, expected {expected} turn"
                )
        if body and body[-1]["role"] != "assistant":
            raise InvalidRecordError(
                f"the conversation ends with a {body[-1]['role']} turn, not an answer"
            )


def _alpaca_turns(record: dict[str, Any]) -> list[Turn]:
    missing = [
        key
        for key, present in (
            ("instruction", record.get("instruction") is not None or bool(record.get("input"))),
            ("output", record.get("output") is not None),
        )
        if not present
    ]
    if missing:
        fields = " and ".join(repr(k) for k in missing)
        raise InvalidRecordError(f"missing field{'s' if len(missing) > 1 else ''} {fields}")
    instruction = _get_str(record, "instruction", required=False)
    query = _get_str(record, "input", required=False)
    output = _get_str(record, "output", required=True)
    system = _get_str(record, "system", required=False)
    if not (instruction + query + output + system).strip():
        raise InvalidRecordError("empty sample: every field is blank")
    turns: list[Turn] = []
    history = record.get("history")
    if history is not None:
        if not isinstance(history, list):
            raise InvalidRecordError(f"field 'history' must be a list, got {_type_name(history)}")
        for number, pair in enumerate(history, start=1):
            if (
                not isinstance(pair, (list, tuple))
                or len(pair) != 2
                or not all(isinstance(p, str) for p in pair)
            ):
                raise InvalidRecordError(
                    f"history item {number} must be a [user, assistant] pair of strings"
                )
            turns += [
                {"role": "user", "content": pair[0]},
                {"role": "assistant", "content": pair[1]},
            ]
    prompt = "\n".join(part for part in (instruction, query) if part.strip())
    if not prompt.strip():
        raise InvalidRecordError("'instruction' and 'input' are both empty: no prompt")
    if not output.strip():
        raise InvalidRecordError("'output' is empty: nothing to learn")
    turns += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    turns = _with_system(turns, system, None)
    _check_turns(turns, alternate=True, what="turn")
    return turns


def _content_text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        pieces = []
        for number, part in enumerate(content, start=1):
            if isinstance(part, str):
                pieces.append(part)
                continue
            if not isinstance(part, dict):
                raise InvalidRecordError(
                    f"{where}: content part {number} must be an object, got {_type_name(part)}"
                )
            kind = part.get("type", "text")
            if kind not in ("text", "input_text", "output_text"):
                raise InvalidRecordError(
                    f"{where}: content part {number} has type {kind!r}; only text is supported"
                )
            text = next((part[k] for k in ("text", "value", "content") if k in part), None)
            if not isinstance(text, str):
                raise InvalidRecordError(f"{where}: content part {number} has no text")
            pieces.append(text)
        return "".join(pieces)
    raise InvalidRecordError(
        f"{where}: content must be a string or a list of text parts, got {_type_name(content)}"
    )


def _tool_calls_text(calls: Any, where: str) -> str:
    if not isinstance(calls, list):
        raise InvalidRecordError(f"{where}: 'tool_calls' must be a list")
    out = []
    for call in calls:
        if not isinstance(call, dict):
            raise InvalidRecordError(f"{where}: each tool call must be an object")
        fn = call.get("function", call)
        if not isinstance(fn, dict):
            raise InvalidRecordError(f"{where}: a tool call's 'function' must be an object")
        arguments = fn.get("arguments")
        if isinstance(arguments, str):
            with contextlib.suppress(json.JSONDecodeError):
                arguments = json.loads(arguments)
        out.append({"name": fn.get("name"), "arguments": arguments})
    return json.dumps(out[0] if len(out) == 1 else out, ensure_ascii=False)


def _turn_list(
    items: Any, *, key: str, roles: dict[str, str], what: str, sharegpt: bool
) -> list[Turn]:
    if items is None:
        raise InvalidRecordError(f"missing field {key!r}")
    if not isinstance(items, list):
        raise InvalidRecordError(f"field {key!r} must be a list, got {_type_name(items)}")
    if not items:
        raise InvalidRecordError(f"empty sample: {key!r} is an empty list")
    turns: list[Turn] = []
    role_key, content_key = ("from", "value") if sharegpt else ("role", "content")
    for position, item in enumerate(items, start=1):
        where = f"{what} {position}"
        if not isinstance(item, dict):
            raise InvalidRecordError(f"{where} must be an object, got {_type_name(item)}")
        # Tolerate the other family's keys (ShareGPT with role/content and vice versa).
        rk = role_key if role_key in item else ("role" if sharegpt else "from")
        ck = content_key if content_key in item else ("content" if sharegpt else "value")
        if rk not in item:
            raise InvalidRecordError(f"{where} has no {role_key!r}")
        raw_role = item[rk]
        if not isinstance(raw_role, str):
            raise InvalidRecordError(
                f"{where}: {role_key!r} must be a string, got {_type_name(raw_role)}"
            )
        role = roles.get(raw_role.strip().lower())
        if role is None:
            known = ", ".join(sorted(set(roles)))
            raise InvalidRecordError(f"{where} has unknown role {raw_role!r} (known: {known})")
        if ck not in item and not item.get("tool_calls"):
            raise InvalidRecordError(f"{where} has no {content_key!r}")
        content = _content_text(item.get(ck), where)
        if role == "assistant" and item.get("tool_calls"):
            calls = _tool_calls_text(item["tool_calls"], where)
            content = f"{content}\n{calls}" if content.strip() else calls
        turns.append({"role": role, "content": content})
    return turns


def _chat_turns(record: dict[str, Any], *, sharegpt: bool) -> list[Turn]:
    """ShareGPT (`conversations`, from/value, strict alternation, a top-level `system`) or
    messages (role/content, any order after the system turn): the turns, validated."""
    key, what = ("conversations", "turn") if sharegpt else ("messages", "message")
    roles = _SHAREGPT_ROLES if sharegpt else _MESSAGES_ROLES
    turns = _turn_list(record.get(key), key=key, roles=roles, what=what, sharegpt=sharegpt)
    if turns[0]["role"] == "system" and not turns[0]["content"].strip() and len(turns) > 1:
        turns = turns[1:]
    system = _get_str(record, "system", required=False) if sharegpt else ""
    turns = _with_system(turns, system, record.get("tools"))
    _check_turns(turns, alternate=sharegpt, what=what)
    return turns


def _sharegpt_turns(record: dict[str, Any]) -> list[Turn]:
    return _chat_turns(record, sharegpt=True)


def _messages_turns(record: dict[str, Any]) -> list[Turn]:
    return _chat_turns(record, sharegpt=False)


def _text_sample(record: dict[str, Any]) -> str:
    text = _get_str(record, "text", required=True)
    if not text.strip():
        raise InvalidRecordError("empty sample: 'text' is blank")
    return text


def _answer_turns(value: Any, key: str) -> list[Turn]:
    if isinstance(value, str):
        turns = [{"role": "assistant", "content": value}]
    elif isinstance(value, dict):
        sharegpt = "from" in value
        turns = _turn_list(
            [value],
            key=key,
            roles=_SHAREGPT_ROLES if sharegpt else _MESSAGES_ROLES,
            what=key,
            sharegpt=sharegpt,
        )
    elif isinstance(value, list) and value:
        sharegpt = isinstance(value[0], dict) and "from" in value[0]
        turns = _turn_list(
            value,
            key=key,
            roles=_SHAREGPT_ROLES if sharegpt else _MESSAGES_ROLES,
            what=f"{key} turn",
            sharegpt=sharegpt,
        )
    elif value is None:
        raise InvalidRecordError(f"missing field {key!r}")
    else:
        raise InvalidRecordError(
            f"field {key!r} must be a string, a turn or a list of turns, got {_type_name(value)}"
        )
    if turns[-1]["role"] != "assistant":
        raise InvalidRecordError(f"{key!r} does not end with an assistant turn")
    if not turns[-1]["content"].strip():
        raise InvalidRecordError(f"{key!r} is empty")
    return turns


def _prompt_turns(record: dict[str, Any]) -> list[Turn]:
    """The prompt of a preference or kto record, from whichever field holds it."""
    if "conversations" in record:
        prompt = _turn_list(
            record["conversations"],
            key="conversations",
            roles=_SHAREGPT_ROLES,
            what="turn",
            sharegpt=True,
        )
    elif "messages" in record:
        prompt = _turn_list(
            record["messages"],
            key="messages",
            roles=_MESSAGES_ROLES,
            what="message",
            sharegpt=False,
        )
    elif isinstance(record.get("prompt"), list):
        items = record["prompt"]
        sharegpt = bool(items) and isinstance(items[0], dict) and "from" in items[0]
        prompt = _turn_list(
            items,
            key="prompt",
            roles=_SHAREGPT_ROLES if sharegpt else _MESSAGES_ROLES,
            what="prompt turn",
            sharegpt=sharegpt,
        )
    elif "prompt" in record or "instruction" in record:
        key = "prompt" if "prompt" in record else "instruction"
        parts = (_get_str(record, key, required=True), _get_str(record, "input", required=False))
        text = "\n".join(p for p in parts if p.strip())
        prompt = [{"role": "user", "content": text}]
    else:
        raise InvalidRecordError(
            "missing the prompt: no 'conversations', 'messages', 'prompt' or 'instruction'"
        )
    return prompt


def _checked_prompt(record: dict[str, Any], prompt: list[Turn]) -> list[Turn]:
    prompt = _with_system(prompt, _get_str(record, "system", required=False), record.get("tools"))
    body = [t for t in prompt if t["role"] != "system"]
    if not body or not any(t["content"].strip() for t in body):
        raise InvalidRecordError("empty sample: the prompt is blank")
    for position, turn in enumerate(prompt, start=1):
        if turn["role"] != "system" and not turn["content"].strip():
            raise InvalidRecordError(f"prompt turn {position} ({turn['role']}) is empty")
    if body[-1]["role"] == "assistant":
        raise InvalidRecordError(
            "the prompt ends with an assistant turn: it must end with the user"
        )
    return prompt


def _kto_sample(record: dict[str, Any]) -> tuple[list[Turn], list[Turn], bool]:
    """KTO's unpaired layout: a prompt, one completion, and whether it is desirable."""
    prompt = _prompt_turns(record)
    completion = _answer_turns(record.get("completion"), "completion")
    if len(completion) > 1 and completion[: len(prompt)] == prompt:
        completion = completion[len(prompt) :]
    label = record.get("label")
    if isinstance(label, str) and label.strip().lower() in ("true", "false"):
        label = label.strip().lower() == "true"  # CSV cells
    if not isinstance(label, bool):
        raise InvalidRecordError(
            f"field 'label' must be true (desirable) or false, got {_type_name(label)}"
        )
    return _checked_prompt(record, prompt), completion, label


def _preference_sample(record: dict[str, Any]) -> tuple[list[Turn], list[Turn], list[Turn]]:
    prompt = _prompt_turns(record)
    chosen = _answer_turns(record.get("chosen"), "chosen")
    rejected = _answer_turns(record.get("rejected"), "rejected")
    # TRL's implicit-prompt style repeats the prompt inside chosen/rejected: keep the answers.
    if len(chosen) > 1 and chosen[: len(prompt)] == prompt:
        chosen = chosen[len(prompt) :]
    if len(rejected) > 1 and rejected[: len(prompt)] == prompt:
        rejected = rejected[len(prompt) :]
    return _checked_prompt(record, prompt), chosen, rejected


def normalize_record(value: Any, fmt: str) -> Sample:
    """One record as a `Sample` (turns, text, or prompt + chosen/rejected); raises
    `InvalidRecordError` with the reason when it cannot be used."""
    if not isinstance(value, dict):
        raise InvalidRecordError(f"not an object (got {_type_name(value)})")
    if fmt == "alpaca":
        return Sample(0, None, "", 0, turns=_alpaca_turns(value))
    if fmt == "sharegpt":
        return Sample(0, None, "", 0, turns=_sharegpt_turns(value))
    if fmt == "messages":
        return Sample(0, None, "", 0, turns=_messages_turns(value))
    if fmt == "text":
        return Sample(0, None, "", 0, text=_text_sample(value))
    if fmt == "preference":
        prompt, chosen, rejected = _preference_sample(value)
        return Sample(0, None, "", 0, turns=prompt, chosen=chosen, rejected=rejected)
    if fmt == "kto":
        prompt, completion, label = _kto_sample(value)
        return Sample(0, None, "", 0, turns=prompt, completion=completion, label=label)
    raise FtuiError(f"unknown dataset format {fmt!r}", f"use one of: {', '.join(FORMATS)}")


@dataclass
class LoadedDataset:
    """A dataset read and validated: its valid samples and every invalid record."""

    path: str
    format: str
    files: list[str]
    records: int
    samples: list[Sample]
    invalid: list[InvalidRecord]
    empty: int
    duplicates: int
    notes: list[str]
    skipped: list[str] = field(default_factory=list)  # folder entries that are not data, why


def _is_empty_reason(reason: str) -> bool:
    return reason.startswith("empty sample")


def load_samples(path: Path | str, *, fmt: str = "auto") -> LoadedDataset:
    """Read, recognise and validate a dataset: valid samples plus every invalid record."""
    path = Path(path)
    wanted = _normalise_format(fmt)
    raw, files, skipped = read_dataset(path, fmt=wanted)
    notes: list[str] = []
    if wanted == "auto":
        detected = detect_format(r.value for r in raw if r.error is None)
        if detected is None:
            first = next((r for r in raw if r.error is None), raw[0])
            keys = (
                ", ".join(repr(k) for k in list(first.value)[:8])
                if isinstance(first.value, dict)
                else _type_name(first.value)
            )
            raise DatasetUnusableError(
                path,
                f"no record looks like a known format (the first holds {keys})",
                f"use {_FORMAT_HELP}; or force one with --format",
                line=first.line,
            )
        fmt_name = detected
    else:
        fmt_name = wanted
    samples: list[Sample] = []
    invalid: list[InvalidRecord] = []
    seen: set[str] = set()
    duplicates = empty = 0
    for record in raw:
        reason = record.error
        sample = None
        if reason is None:
            kind = classify_record(record.value)
            if kind is not None and kind != fmt_name and wanted == "auto":
                reason = (
                    f"looks like {kind}, but the dataset is {fmt_name} (mixed formats): "
                    "keep one format per dataset"
                )
            else:
                try:
                    sample = normalize_record(record.value, fmt_name)
                except InvalidRecordError as exc:
                    reason = exc.reason
                    if kind is not None and kind != fmt_name:
                        reason += f" (the record looks like {kind})"
        if sample is None:
            assert reason is not None
            if _is_empty_reason(reason):
                empty += 1
            invalid.append(
                InvalidRecord(
                    record.index, record.line, record.file, record.row, reason, record.where
                )
            )
            continue
        sample = Sample(
            record.index,
            record.line,
            record.file,
            record.row,
            turns=sample.turns,
            text=sample.text,
            chosen=sample.chosen,
            rejected=sample.rejected,
            where=record.where,
            completion=sample.completion,
            label=sample.label,
        )
        key = sample.key()
        if key in seen:
            duplicates += 1
        seen.add(key)
        samples.append(sample)
    if skipped:
        shown = "; ".join(skipped[:10]) + (
            f"; and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        )
        what = "1 entry of the folder is" if len(skipped) == 1 else f"{len(skipped)} entries are"
        notes.append(f"{what} not read: {shown}")
    return LoadedDataset(
        str(path), fmt_name, files, len(raw), samples, invalid, empty, duplicates, notes, skipped
    )
