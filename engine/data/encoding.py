"""engine.data.encoding: one part of `engine.data` (see the package docstring)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.data.records import (
    FALLBACK_CHAT_TEMPLATE,
    IGNORE_INDEX,
    InvalidRecordError,
    Turn,
)
from engine.errors import FtuiError


def _has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _tokenizer_name(tokenizer: Any) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


class _Renderer:
    """Renders turns to text with the tokenizer's template or the fallback one."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.fallback = not _has_chat_template(tokenizer)
        self.template = FALLBACK_CHAT_TEMPLATE if self.fallback else None

    def __call__(self, turns: list[Turn], generation_prompt: bool = False) -> str:
        out = self.tokenizer.apply_chat_template(
            turns,
            chat_template=self.template,
            tokenize=False,
            add_generation_prompt=generation_prompt,
        )
        if not isinstance(out, str):  # pragma: no cover - tokenize=False returns text
            raise TypeError(f"apply_chat_template returned {type(out).__name__}")
        return out

    def safe(self, turns: list[Turn], generation_prompt: bool = False) -> str | None:
        if not turns:
            return None
        try:
            return self(turns, generation_prompt)
        except Exception:
            return None


def _compat_turns(turns: list[Turn]) -> list[Turn]:
    """For strict templates: the system text into the first user turn, tool results as user
    turns, consecutive same-role turns merged."""
    system = [t["content"] for t in turns if t["role"] == "system"]
    out: list[Turn] = []
    for turn in turns:
        if turn["role"] == "system":
            continue
        role, content = turn["role"], turn["content"]
        if role == "tool":
            role, content = "user", f"Tool result:\n{content}"
        if out and out[-1]["role"] == role:
            out[-1] = {"role": role, "content": f"{out[-1]['content']}\n\n{content}"}
        else:
            out.append({"role": role, "content": content})
    if system:
        first_user = next((i for i, t in enumerate(out) if t["role"] == "user"), None)
        if first_user is not None:
            merged = "\n\n".join([*system, out[first_user]["content"]])
            out[first_user] = {"role": "user", "content": merged}
    return out


def _template_error(exc: Exception) -> InvalidRecordError:
    message = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return InvalidRecordError(f"the chat template rejects this conversation: {message}")


def _render_checked(render: _Renderer, turns: list[Turn]) -> tuple[str, list[Turn]]:
    """(text, turns actually rendered); retries strict templates with compatible turns."""
    try:
        return render(turns), turns
    except Exception as first:
        compat = _compat_turns(turns)
        if compat == turns:
            raise _template_error(first) from None
        try:
            return render(compat), compat
        except Exception:
            raise _template_error(first) from None


def _common_prefix(a: str, b: str) -> int:
    """Length of the common prefix (binary search on slices: C-speed on long texts)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        mid = (low + high + 1) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid - 1
    return low


def _answer_start(render: _Renderer, turns: list[Turn], i: int, through: str) -> int:
    """Where assistant turn i's answer starts in `through` (the render up to and including it).

    The prompt rendered with the generation prompt gives a first bound; the same conversation
    with an empty answer then extends it over whatever header both share (templates whose
    generation prompt differs from their real turn header), never past the answer's text."""
    start = 0
    for generation_prompt in (True, False):
        prompt = render.safe(turns[:i], generation_prompt)
        if prompt is not None and through.startswith(prompt):
            start = len(prompt)
            break
    empty = render.safe([*turns[:i], {"role": "assistant", "content": ""}], False)
    if empty is not None:
        shared = _common_prefix(empty, through)
        head = turns[i]["content"].strip()[:16]
        found = through.find(head, start) if head else -1
        if found >= 0:
            shared = min(shared, found)
        start = max(start, shared)
    return start


def assistant_spans(turns: list[Turn], tokenizer: Any) -> tuple[str, list[tuple[int, int]], bool]:
    """(rendered text, character spans of the answers incl. their end-of-turn marker, fallback
    template used). Raises `InvalidRecordError` when the template rejects the turns."""
    render = _Renderer(tokenizer)
    full, turns = _render_checked(render, turns)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, turn in enumerate(turns):
        if turn["role"] != "assistant":
            continue
        through = render.safe(turns[: i + 1], False)
        if through is None:
            continue
        start = _answer_start(render, turns, i, through)
        end = len(through.rstrip())
        if end <= start:
            continue
        if full.startswith(through):
            s, e = start, end
        else:  # the template renders earlier turns differently: find the answer in the full text
            piece = through[start:end]
            pos = full.find(piece, cursor)
            if pos >= 0:
                s, e = pos, pos + len(piece)
            else:
                content = turn["content"].strip()
                pos = full.find(content, cursor) if content else -1
                if pos < 0:
                    continue
                s, e = pos, pos + len(content)
                tail = (
                    through[through.rfind(content) + len(content) : end]
                    if content in through
                    else ""
                )
                if tail and full.startswith(tail, e):
                    e += len(tail)
        if s < cursor:
            continue
        spans.append((s, e))
        cursor = e
    return full, spans, render.fallback


def _tokenize_text(tokenizer: Any, text: str, *, offsets: bool) -> Any:
    return tokenizer(text, add_special_tokens=False, return_offsets_mapping=offsets, verbose=False)


def _labels_for(
    tokenizer: Any, text: str, spans: list[tuple[int, int]]
) -> tuple[list[int], list[int]]:
    try:
        enc = _tokenize_text(tokenizer, text, offsets=True)
        offsets: list[tuple[int, int]] | None = list(enc["offset_mapping"])
    except (NotImplementedError, ValueError, TypeError, KeyError):
        enc = _tokenize_text(tokenizer, text, offsets=False)
        offsets = None
    ids = [int(t) for t in enc["input_ids"]]
    labels = [IGNORE_INDEX] * len(ids)
    if offsets is not None:
        j = 0
        for k, (a, b) in enumerate(offsets):
            while j < len(spans) and spans[j][1] <= a:
                j += 1
            if j < len(spans) and a < spans[j][1] and max(b, a + 1) > spans[j][0]:
                labels[k] = ids[k]
        return ids, labels
    # Slow tokenizers have no offsets: count the tokens of each prefix instead.
    for s, e in spans:
        a = len(_tokenize_text(tokenizer, text[:s], offsets=False)["input_ids"])
        b = len(_tokenize_text(tokenizer, text[:e], offsets=False)["input_ids"])
        labels[a:b] = ids[a:b]
    return ids, labels


@dataclass(frozen=True)
class EncodedConversation:
    input_ids: list[int]
    labels: list[int]
    fallback_template: bool

    def truncate(self, seq_len: int) -> dict[str, list[int]]:
        ids = self.input_ids[:seq_len]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": self.labels[:seq_len]}


def encode_conversation(turns: list[Turn], tokenizer: Any) -> EncodedConversation:
    """The whole conversation tokenised with labels (untruncated)."""
    text, spans, fallback = assistant_spans(turns, tokenizer)
    ids, labels = _labels_for(tokenizer, text, spans)
    if all(label == IGNORE_INDEX for label in labels):
        raise InvalidRecordError("no answer tokens found after applying the chat template")
    return EncodedConversation(ids, labels, fallback)


def tokenize_conversation(turns: list[Turn], tokenizer: Any, seq_len: int) -> dict[str, list[int]]:
    """input_ids, attention_mask and labels (-100 except the assistant answers and their
    end-of-turn token) of one conversation, truncated to `seq_len` tokens."""
    if seq_len < 1:
        raise FtuiError(f"sequence length {seq_len} is not positive", "use e.g. --seq-len 2048")
    return encode_conversation(turns, tokenizer).truncate(seq_len)


def _eos_id(tokenizer: Any) -> int | None:
    eos = getattr(tokenizer, "eos_token_id", None)
    return int(eos) if isinstance(eos, int) else None


def _document_ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    eos = _eos_id(tokenizer)
    out: list[list[int]] = []
    for start in range(0, len(texts), 256):
        batch = tokenizer(list(texts[start : start + 256]), add_special_tokens=True, verbose=False)
        for ids in batch["input_ids"]:
            doc = [int(t) for t in ids]
            if eos is not None and (not doc or doc[-1] != eos):
                doc.append(eos)
            out.append(doc)
    return out


def tokenize_pretraining(
    texts: Sequence[str], tokenizer: Any, seq_len: int
) -> dict[str, list[list[int]]]:
    """Documents tokenised, each closed with EOS, concatenated and cut into blocks of `seq_len`
    (the last block may be shorter). labels = input_ids."""
    if seq_len < 1:
        raise FtuiError(f"sequence length {seq_len} is not positive", "use e.g. --seq-len 2048")
    stream: list[int] = []
    for doc in _document_ids(tokenizer, texts):
        stream.extend(doc)
    blocks = [stream[i : i + seq_len] for i in range(0, len(stream), seq_len)]
    return {
        "input_ids": blocks,
        "attention_mask": [[1] * len(b) for b in blocks],
        "labels": [list(b) for b in blocks],
    }
