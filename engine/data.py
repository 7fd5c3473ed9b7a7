"""Training data: read, recognise, validate, normalise and tokenise fine-tuning datasets.

Files: a JSON array, JSONL, CSV (or TSV) and Parquet, or a folder of such files (read in sorted
order, recursively; hidden files are skipped). Formats, recognised per record by their fields,
the majority deciding (or forced with `fmt=`):

- ``alpaca``: ``instruction`` / ``input`` / ``output``, optional ``system`` and ``history``
  (a list of ``[user, assistant]`` pairs, oldest first).
- ``sharegpt``: ``conversations``, a list of ``{"from", "value"}`` turns. Roles human/user,
  gpt/assistant, system (first turn only), ``function_call`` (an assistant turn) and
  ``observation`` (a tool turn); optional ``system`` and ``tools`` (a JSON string or a list).
  Turns must alternate: user or observation, then gpt or function_call, ending on the latter.
- ``messages`` (OpenAI / ChatML): ``messages``, a list of ``{"role", "content"}``; content is a
  string or a list of text parts (``{"type": "text", "text" | "value": ...}``); extra keys such
  as ``loss_weight`` or ``name`` are tolerated; an assistant's ``tool_calls`` become its text.
- ``text``: ``{"text": ...}`` documents for continued pre-training.
- ``preference``: ``chosen`` / ``rejected`` with the prompt in ``conversations``, ``messages``,
  ``prompt`` or ``instruction``. Recognised, validated and measured; SFT on them is refused.

Every chat record becomes a list of ``{"role": system|user|assistant|tool, "content": str}``
turns. Tool definitions (a record's ``tools``) are appended to the system turn's text (one is
made when the record has none) as "You can call these tools: <JSON>": the same text for every
chat template, including the fallback, and nothing lost on templates that ignore a ``tools``
argument.

Validation never raises on a bad record: each one gets its location (1-based line for JSONL and
CSV, record index plus its line for a JSON array, the row for Parquet) and a reason, and counts as
invalid. A file that cannot be read as a whole (empty, binary, not UTF-8, a truncated JSON array,
a CSV without the columns of any format) raises `DatasetUnusableError` naming the position.

SFT tokenisation renders each conversation with the tokenizer's chat template (or, without one,
`FALLBACK_CHAT_TEMPLATE`: "### System:/### User:/### Assistant:" blocks, each answer closed with
the EOS token) and labels only the assistant answers and their end-of-turn token. The spans come
from rendering prefix by prefix (the conversation up to each answer with the generation prompt,
and through the answer) and diffing the texts, so any template works without `{% generation %}`.

This module is headless and cheap to import: transformers, datasets and pyarrow load only inside
the functions that need them.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import random
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.dataset_stats import CHARS_PER_TOKEN, TEMPLATE_TOKENS
from engine.errors import FtuiError

FORMATS = ("alpaca", "sharegpt", "messages", "text", "preference")
FORMAT_ALIASES = {
    "openai": "messages",
    "chatml": "messages",
    "pretrain": "text",
    "pretraining": "text",
    "dpo": "preference",
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

# Used when the tokenizer has no chat template. Newlines are expressions so that Jinja's
# whitespace handling cannot eat them.
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
# Fields that a CSV cell may hold as JSON text.
_JSON_CELL_FIELDS = frozenset(
    {"conversations", "messages", "history", "tools", "chosen", "rejected", "prompt"}
)
# The columns that make a table usable, per format (any one group must be complete).
_REQUIRED_COLUMNS: dict[str, tuple[tuple[str, ...], ...]] = {
    "alpaca": (("instruction", "output"), ("input", "output")),
    "sharegpt": (("conversations",),),
    "messages": (("messages",),),
    "text": (("text",),),
    "preference": (("chosen", "rejected"),),
}
_FORMAT_HELP = (
    "Alpaca (instruction/input/output), ShareGPT (conversations), OpenAI messages (messages), "
    "plain text (text) or preference pairs (chosen/rejected)"
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


# ---------------------------------------------------------------------------------------------
# Data classes
# ---------------------------------------------------------------------------------------------


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

    def key(self) -> str:
        """Identity for duplicate counting."""
        if self.text is not None:
            return self.text
        return json.dumps([self.turns, self.chosen, self.rejected], ensure_ascii=False)

    def chars(self) -> tuple[int, int]:
        """(characters, turns) of the longest sequence this sample trains on."""
        if self.text is not None:
            return len(self.text), 0
        base = sum(len(t["content"]) for t in self.turns)
        extra = [self.chosen or [], self.rejected or []]
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
    estimated: bool  # lengths from characters (3.7 per token), not a tokenizer
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
            "chars_per_token": CHARS_PER_TOKEN if self.estimated else None,
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
        }


# ---------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def dataset_files(path: Path) -> list[Path]:
    """The data files of a dataset: the file itself, or a folder's supported files, sorted."""
    if not path.exists():
        raise DatasetUnusableError(
            path, "it does not exist", "pass the path of a JSON, JSONL, CSV or Parquet file"
        )
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DatasetUnusableError(path, "it is not a regular file", "pass a data file")
    found = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.suffix.lower() in SUPPORTED_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not found:
        raise DatasetUnusableError(
            path,
            "the folder holds no .json, .jsonl, .csv or .parquet files",
            "put the data files in the folder, or pass one file",
        )
    return found


def _file_kind(path: Path, head: bytes) -> str:
    suffix = path.suffix.lower()
    if head.startswith(b"PAR1") or suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in JSON_SUFFIXES:
        return "json"
    stripped = head.lstrip()
    if stripped[:1] in (b"[", b"{"):
        return "json"
    raise DatasetUnusableError(
        path,
        f"unsupported file type {suffix or '(no extension)'!r}",
        "use a .json, .jsonl, .csv or .parquet file",
    )


def _decode(path: Path, data: bytes) -> str:
    if not data.strip():
        raise DatasetUnusableError(
            path, "the file is empty", "write at least one record (see `ftui data check --help`)"
        )
    if data.startswith(b"\x1f\x8b"):
        raise DatasetUnusableError(
            path,
            "the file is gzip-compressed",
            f"decompress it first: gunzip -k {path}",
            offset=0,
        )
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DatasetUnusableError(
            path,
            "the file is UTF-16 text, not UTF-8",
            f"re-encode it: iconv -f utf-16 -t utf-8 {path} > {path.stem}.utf8{path.suffix}",
            offset=0,
        )
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DatasetUnusableError(
            path,
            "the file holds binary data (a NUL byte), not text records",
            "pass a JSON, JSONL, CSV or Parquet file (is this the right file?)",
            line=data.count(b"\n", 0, nul) + 1,
            offset=nul,
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.start + 1].hex()
        raise DatasetUnusableError(
            path,
            f"the file is not UTF-8 text (byte 0x{bad} cannot be decoded)",
            f"re-encode it as UTF-8, e.g. iconv -f latin1 -t utf-8 {path} > "
            f"{path.stem}.utf8{path.suffix}",
            line=data.count(b"\n", 0, exc.start) + 1,
            offset=exc.start,
        ) from None


def _skip_ws(text: str, pos: int) -> int:
    n = len(text)
    while pos < n and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _json_error(path: Path, exc: json.JSONDecodeError, what: str) -> DatasetUnusableError:
    return DatasetUnusableError(
        path,
        f"{what} is not valid JSON: {exc.msg}",
        "repair the JSON at that position (a truncated file? a missing comma or bracket?), "
        "or write one record per line as JSONL",
        line=exc.lineno,
        column=exc.colno,
    )


def _read_json_array(path: Path, text: str) -> list[tuple[Any, int]]:
    """(element, line) of a JSON array, with each element's starting line."""
    decoder = json.JSONDecoder()
    items: list[tuple[Any, int]] = []
    pos = _skip_ws(text, 0)
    assert text[pos] == "["
    pos = _skip_ws(text, pos + 1)
    line, line_pos = 1, 0
    if pos < len(text) and text[pos] == "]":
        end = _skip_ws(text, pos + 1)
        if end != len(text):
            raise _json_error(path, json.JSONDecodeError("Extra data", text, end), "the file")
        return items
    while True:
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            error = exc
            if exc.pos >= len(text):
                error = json.JSONDecodeError(
                    "the array is cut off (truncated file?)", text, exc.pos
                )
            raise _json_error(path, error, f"record {len(items) + 1} of the array") from None
        line += text.count("\n", line_pos, pos)
        line_pos = pos
        items.append((value, line))
        pos = _skip_ws(text, end)
        if pos >= len(text):
            cut = json.JSONDecodeError("the array is cut off (truncated file?)", text, len(text))
            raise _json_error(path, cut, "the file")
        if text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
            continue
        if text[pos] == "]":
            end = _skip_ws(text, pos + 1)
            if end != len(text):
                extra = json.JSONDecodeError("Extra data after the array", text, end)
                raise _json_error(path, extra, "the file")
            return items
        bad = json.JSONDecodeError("Expecting ',' or ']' between records", text, pos)
        raise _json_error(path, bad, f"the array after record {len(items)}")


def _read_jsonl(path: Path, text: str) -> list[tuple[Any, int, str | None]]:
    """(value, line, error) per non-blank line; a line that does not parse carries its error."""
    out: list[tuple[Any, int, str | None]] = []
    first_error: tuple[int, json.JSONDecodeError] | None = None
    parsed = 0
    # Split on "\n" only: JSON strings may hold raw U+2028 and friends, which splitlines() cuts.
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            out.append((json.loads(raw), number, None))
            parsed += 1
        except json.JSONDecodeError as exc:
            if first_error is None:
                first_error = (number, exc)
            out.append((None, number, f"not valid JSON: {exc.msg} (column {exc.colno})"))
    if parsed == 0 and first_error is not None:
        number, error = first_error
        raise DatasetUnusableError(
            path,
            f"no line is valid JSON ({error.msg})",
            "write one JSON object per line (JSONL), or a JSON array of objects",
            line=number,
            column=error.colno,
        )
    return out


def _read_json_file(path: Path, text: str) -> tuple[list[tuple[Any, int, str | None]], str]:
    """(rows, "array" or "lines")."""
    start = _skip_ws(text, 0)
    first = text[start] if start < len(text) else ""
    if first == "[":
        try:
            items = _read_json_array(path, text)
            return [(value, line, None) for value, line in items], "array"
        except DatasetUnusableError as exc:
            # JSONL whose lines are arrays is not one array: read it line by line then.
            if "Extra data" not in exc.problem or not _parses(text.lstrip().split("\n", 1)[0]):
                raise
    elif first == "{":
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, dict):
            return [(whole, text.count("\n", 0, start) + 1, None)], "lines"
    else:
        try:
            scalar = json.loads(text)
        except json.JSONDecodeError:
            pass
        else:
            raise DatasetUnusableError(
                path,
                f"the file holds {_type_name(scalar)}, not a list of records",
                "write a JSON array of objects, or one JSON object per line (JSONL)",
                line=1,
            )
    return _read_jsonl(path, text), "lines"


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def _maybe_json_cell(key: str, value: Any) -> Any:
    if key in _JSON_CELL_FIELDS and isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _check_columns(path: Path, columns: Sequence[str], fmt: str) -> None:
    present = set(columns)
    wanted = FORMATS if fmt == "auto" else (fmt,)
    for name in wanted:
        if any(set(group) <= present for group in _REQUIRED_COLUMNS[name]):
            return
    shown = ", ".join(repr(c) for c in columns) or "none"
    if fmt == "auto":
        fix = (
            "name the columns instruction,input,output (Alpaca), text (pre-training), "
            "conversations or messages (JSON in the cell), or chosen,rejected (preference)"
        )
        problem = f"its columns ({shown}) match no known format"
    else:
        need = " and ".join(_REQUIRED_COLUMNS[fmt][0])
        fix = f"add the column(s) {need}, or pick the right --format"
        problem = f"its columns ({shown}) lack {need} for format {fmt!r}"
    raise DatasetUnusableError(path, problem, fix, line=1)


def _read_csv(path: Path, text: str, fmt: str) -> list[tuple[Any, int, str | None]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        header = []
    except csv.Error as exc:
        raise DatasetUnusableError(
            path, f"the CSV header cannot be read: {exc}", "fix the header row", line=1
        ) from None
    header = [h.strip() for h in header]
    if not header or not any(header):
        raise DatasetUnusableError(
            path, "the CSV file has no header row", "put the column names on the first line"
        )
    _check_columns(path, header, fmt)
    out: list[tuple[Any, int, str | None]] = []
    while True:
        start_line = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DatasetUnusableError(
                path,
                f"the CSV record starting on this line cannot be parsed: {exc}",
                "check the quoting there (an unclosed quote swallows the rest of the file)",
                line=start_line,
            ) from None
        if not cells:  # a blank line
            continue
        if len(cells) != len(header):
            plural = "s" if len(cells) != 1 else ""
            reason = f"has {len(cells)} field{plural}, the header has {len(header)}"
            out.append((None, start_line, reason))
            continue
        record = {k: _maybe_json_cell(k, v) for k, v in zip(header, cells, strict=True)}
        out.append((record, start_line, None))
    return out


def _read_parquet(path: Path, fmt: str) -> list[tuple[Any, int | None, str | None]]:
    try:
        import pyarrow.parquet as pq  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - pyarrow comes with datasets
        raise FtuiError(
            "reading Parquet needs pyarrow", "pip install pyarrow (it comes with `datasets`)"
        ) from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...
        raise DatasetUnusableError(
            path,
            f"it is not a readable Parquet file ({str(exc).splitlines()[0][:200]})",
            "re-export it (e.g. pandas DataFrame.to_parquet), or pass JSONL",
        ) from None
    if table.num_rows == 0:
        raise DatasetUnusableError(path, "the Parquet file has no rows", "export it with data")
    _check_columns(path, table.column_names, fmt)
    rows = table.to_pylist()
    return [({k: _maybe_json_cell(k, v) for k, v in row.items()}, None, None) for row in rows]


def read_records(path: Path | str, *, fmt: str = "auto") -> tuple[list[RawRecord], list[str]]:
    """Every record of a dataset file or folder, with its location; raises when unusable."""
    path = Path(path)
    fmt = _normalise_format(fmt)
    files = dataset_files(path)
    records: list[RawRecord] = []
    names: list[str] = []
    for file in files:
        name = file.name if file == path else str(file.relative_to(path))
        names.append(name)
        try:
            with file.open("rb") as fh:
                head = fh.read(4096)
        except OSError as exc:
            raise DatasetUnusableError(
                file, f"cannot read it ({exc.strerror})", "check it"
            ) from exc
        kind = _file_kind(file, head)
        rows: Sequence[tuple[Any, int | None, str | None]]
        if kind == "parquet":
            rows = _read_parquet(file, fmt)
        else:
            try:
                data = file.read_bytes()
            except OSError as exc:
                raise DatasetUnusableError(
                    file, f"cannot read it ({exc.strerror})", "check its permissions"
                ) from exc
            text = _decode(file, data)
            if kind == "csv":
                rows = list(_read_csv(file, text, fmt))
            else:
                rows, layout = _read_json_file(file, text)
                kind = "json" if layout == "array" else "jsonl"
        if not rows:
            raise DatasetUnusableError(
                file, "it holds no records", "write at least one record into it"
            )
        for row_number, (value, line, error) in enumerate(rows, start=1):
            if line is None:
                where = f"row {row_number}"
            elif kind == "json":
                where = f"record {row_number} (line {line})"
            else:
                where = f"line {line}"
            records.append(
                RawRecord(
                    value=value,
                    index=len(records),
                    line=line,
                    file=name,
                    row=row_number,
                    error=error,
                    where=where,
                )
            )
    return records, names


# ---------------------------------------------------------------------------------------------
# Formats: detection and normalisation
# ---------------------------------------------------------------------------------------------


def _normalise_format(fmt: str) -> str:
    name = (fmt or "auto").strip().lower()
    name = FORMAT_ALIASES.get(name, name)
    if name != "auto" and name not in FORMATS:
        raise FtuiError(
            f"unknown dataset format {fmt!r}",
            f"use one of: auto, {', '.join(FORMATS)} (aliases: {', '.join(FORMAT_ALIASES)})",
        )
    return name


def classify_record(value: Any) -> str | None:
    """The format a single record looks like, from its fields (None: not recognisable)."""
    if not isinstance(value, dict):
        return None
    if "chosen" in value and "rejected" in value:
        return "preference"
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


def _sharegpt_turns(record: dict[str, Any]) -> list[Turn]:
    turns = _turn_list(
        record.get("conversations"),
        key="conversations",
        roles=_SHAREGPT_ROLES,
        what="turn",
        sharegpt=True,
    )
    if turns[0]["role"] == "system" and not turns[0]["content"].strip() and len(turns) > 1:
        turns = turns[1:]
    system = _get_str(record, "system", required=False)
    turns = _with_system(turns, system, record.get("tools"))
    _check_turns(turns, alternate=True, what="turn")
    return turns


def _messages_turns(record: dict[str, Any]) -> list[Turn]:
    turns = _turn_list(
        record.get("messages"),
        key="messages",
        roles=_MESSAGES_ROLES,
        what="message",
        sharegpt=False,
    )
    if turns[0]["role"] == "system" and not turns[0]["content"].strip() and len(turns) > 1:
        turns = turns[1:]
    turns = _with_system(turns, "", record.get("tools"))
    _check_turns(turns, alternate=False, what="message")
    return turns


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


def _preference_sample(record: dict[str, Any]) -> tuple[list[Turn], list[Turn], list[Turn]]:
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
    chosen = _answer_turns(record.get("chosen"), "chosen")
    rejected = _answer_turns(record.get("rejected"), "rejected")
    # TRL's implicit-prompt style repeats the prompt inside chosen/rejected: keep the answers.
    if len(chosen) > 1 and chosen[: len(prompt)] == prompt:
        chosen = chosen[len(prompt) :]
    if len(rejected) > 1 and rejected[: len(prompt)] == prompt:
        rejected = rejected[len(prompt) :]
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
    return prompt, chosen, rejected


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


def _is_empty_reason(reason: str) -> bool:
    return reason.startswith("empty sample")


def load_samples(path: Path | str, *, fmt: str = "auto") -> LoadedDataset:
    """Read, recognise and validate a dataset: valid samples plus every invalid record."""
    path = Path(path)
    wanted = _normalise_format(fmt)
    raw, files = read_records(path, fmt=wanted)
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
        )
        key = sample.key()
        if key in seen:
            duplicates += 1
        seen.add(key)
        samples.append(sample)
    return LoadedDataset(
        str(path), fmt_name, files, len(raw), samples, invalid, empty, duplicates, notes
    )


# ---------------------------------------------------------------------------------------------
# Tokenisation
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------


def _estimate_tokens(sample: Sample) -> int:
    chars, turns = sample.chars()
    if sample.text is not None:
        return max(1, math.ceil(chars / CHARS_PER_TOKEN) + 1)
    return max(1, math.ceil(chars / CHARS_PER_TOKEN) + TEMPLATE_TOKENS * max(turns, 1))


def _percentile(ordered: list[int], q: float) -> int:
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def length_summary(lengths: Sequence[int]) -> LengthSummary | None:
    if not lengths:
        return None
    ordered = sorted(lengths)
    return LengthSummary(
        p50=_percentile(ordered, 0.50),
        p90=_percentile(ordered, 0.90),
        p95=_percentile(ordered, 0.95),
        p99=_percentile(ordered, 0.99),
        max=ordered[-1],
        mean=sum(ordered) / len(ordered),
        total=sum(ordered),
    )


def _nice_width(raw: float) -> int:
    if raw <= 1:
        return 1
    exponent = 10 ** math.floor(math.log10(raw))
    for step in (1, 2, 2.5, 5, 10):
        width = step * exponent
        if width >= raw and float(width).is_integer():
            return int(width)
    return int(10 * exponent)  # pragma: no cover


def length_histogram(
    lengths: Sequence[int], buckets: int = HISTOGRAM_BUCKETS
) -> list[dict[str, int]]:
    """At most `buckets` equal-width buckets of round width covering the lengths:
    [{lo, hi, count}], hi exclusive; starts at 0 unless every length is far from it."""
    if not lengths:
        return []
    low, top = min(lengths), max(lengths)
    width = _nice_width((top + 1) / buckets)
    if low >= (top + 1) // 2:  # all lengths in the upper half: zoom in
        width = _nice_width((top - low + 1) / buckets)
    while True:
        start = 0 if low < (top + 1) // 2 else (low // width) * width
        count = max(1, math.ceil((top + 1 - start) / width))
        if count <= buckets:
            break
        width = _nice_width(width + 1)
    hist = [
        {"lo": start + i * width, "hi": start + (i + 1) * width, "count": 0} for i in range(count)
    ]
    for value in lengths:
        hist[min((value - start) // width, count - 1)]["count"] += 1
    return hist


def _measure(
    samples: list[Sample], tokenizer: Any
) -> tuple[list[Sample], list[int], list[InvalidRecord], bool]:
    """Token lengths with a real tokenizer; samples the template rejects become invalid."""
    render = _Renderer(tokenizer)
    kept: list[Sample] = []
    texts: list[str] = []
    owners: list[int] = []  # index into kept for each text
    invalid: list[InvalidRecord] = []
    plain: list[Sample] = []
    for sample in samples:
        if sample.text is not None:
            plain.append(sample)
            continue
        sequences = (
            [sample.turns]
            if sample.chosen is None
            else [sample.turns + sample.chosen, sample.turns + (sample.rejected or [])]
        )
        try:
            rendered = [_render_checked(render, seq)[0] for seq in sequences]
        except InvalidRecordError as exc:
            invalid.append(
                InvalidRecord(
                    sample.index, sample.line, sample.file, sample.row, exc.reason, sample.where
                )
            )
            continue
        kept.append(sample)
        for text in rendered:
            texts.append(text)
            owners.append(len(kept) - 1)
    lengths = [0] * len(kept)
    for start in range(0, len(texts), 256):
        batch = tokenizer(texts[start : start + 256], add_special_tokens=False, verbose=False)
        for offset, ids in enumerate(batch["input_ids"]):
            owner = owners[start + offset]
            lengths[owner] = max(lengths[owner], len(ids))
    if plain:
        docs = _document_ids(tokenizer, [s.text or "" for s in plain])
        kept += plain
        lengths += [len(d) for d in docs]
    order = sorted(range(len(kept)), key=lambda k: kept[k].index)
    return [kept[k] for k in order], [lengths[k] for k in order], invalid, render.fallback


def _report(
    loaded: LoadedDataset,
    samples: list[Sample],
    lengths: list[int],
    extra_invalid: list[InvalidRecord],
    *,
    seq_len: int | None,
    tokenizer: Any,
    fallback: bool,
) -> DataReport:
    invalid = sorted(loaded.invalid + extra_invalid, key=lambda r: r.index)
    notes = list(loaded.notes)
    truncated = 0
    share: float | None = None
    if seq_len is not None and samples:
        if loaded.format == "text":
            notes.append(
                "pre-training text is concatenated and cut into blocks of seq_len: nothing is "
                "truncated"
            )
            share = 0.0
        else:
            truncated = sum(1 for n in lengths if n > seq_len)
            share = truncated / len(samples)
    if tokenizer is None:
        notes.append(
            f"token lengths are estimated from characters ({CHARS_PER_TOKEN} per token, "
            f"+{TEMPLATE_TOKENS} per turn for the chat template); pass a tokenizer (--model) to "
            "measure them"
        )
    elif fallback and loaded.format != "text":
        notes.append(
            "the tokenizer has no chat template: conversations use the fallback "
            "'### System:/### User:/### Assistant:' template with the EOS token after each answer"
        )
    if loaded.format == "preference":
        notes.append(
            "preference pairs: lengths are prompt + the longer of chosen/rejected; SFT training "
            "on them is not supported yet"
        )
    longest = None
    if samples:
        k = max(range(len(samples)), key=lambda i: lengths[i])
        s = samples[k]
        longest = {
            "line": s.line,
            "row": s.row,
            "file": s.file,
            "location": s.where,
            "tokens": lengths[k],
        }
    return DataReport(
        path=loaded.path,
        format=loaded.format,
        records=loaded.records,
        valid=len(samples),
        invalid=invalid,
        empty=loaded.empty,
        duplicates=loaded.duplicates,
        lengths=length_summary(lengths),
        estimated=tokenizer is None,
        histogram=length_histogram(lengths),
        seq_len=seq_len,
        truncated=truncated,
        truncated_share=share,
        files=loaded.files,
        template=(
            None
            if tokenizer is None or loaded.format == "text"
            else ("fallback" if fallback else "chat")
        ),
        tokenizer=None if tokenizer is None else _tokenizer_name(tokenizer),
        longest=longest,
        notes=notes,
    )


def _check_seq_len(seq_len: int | None) -> None:
    if seq_len is not None and (not isinstance(seq_len, int) or seq_len < 1):
        raise FtuiError(f"sequence length {seq_len} is not positive", "use e.g. --seq-len 2048")


def check_dataset(
    path: Path | str,
    *,
    fmt: str = "auto",
    tokenizer: Any = None,
    seq_len: int | None = None,
) -> DataReport:
    """Read and validate a dataset; token lengths measured with `tokenizer` or estimated."""
    _check_seq_len(seq_len)
    loaded = load_samples(path, fmt=fmt)
    if tokenizer is None:
        samples = loaded.samples
        lengths = [_estimate_tokens(s) for s in samples]
        extra: list[InvalidRecord] = []
        fallback = False
    else:
        samples, lengths, extra, fallback = _measure(loaded.samples, tokenizer)
    return _report(
        loaded, samples, lengths, extra, seq_len=seq_len, tokenizer=tokenizer, fallback=fallback
    )


def load_tokenizer(model: str) -> tuple[Any, str | None]:
    """(tokenizer or None, a note for the report) for a model name, offline.

    A local directory or an HF-cache model loads with `AutoTokenizer.from_pretrained(...,
    local_files_only=True)`; a built-in profile tries the HF cache by its hub id. Without local
    tokenizer files the tokenizer is None and the note says lengths are estimated."""
    from engine.models import resolve_model

    arch = resolve_model(model)
    source = arch.path or arch.hf_id
    if source is None:  # pragma: no cover - profiles carry an hf_id
        return None, f"{arch.name} names no tokenizer: token lengths are estimated"
    if arch.path is None and arch.hf_id is not None:
        from engine.paths import hf_hub_cache

        if not (hf_hub_cache() / f"models--{arch.hf_id.replace('/', '--')}").is_dir():
            return None, (
                f"no tokenizer for {arch.name} on this machine (`hf download {arch.hf_id}` "
                "fetches it): token lengths are estimated from characters"
            )
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None, "transformers is not installed: token lengths are estimated"
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        where = "in" if arch.path else "for"
        fetch = f" (`hf download {arch.hf_id}` fetches it)" if arch.hf_id else ""
        return None, (
            f"no tokenizer {where} {source} on this machine{fetch}: token lengths are estimated "
            f"from characters ({reason})"
        )
    return tokenizer, None


# ---------------------------------------------------------------------------------------------
# Building training sets
# ---------------------------------------------------------------------------------------------


def _refuse_invalid(report: DataReport) -> None:
    first = ", ".join(
        (f"{item.file} " if len(report.files) > 1 else "") + item.location
        for item in report.invalid[:5]
    )
    more = ", ..." if len(report.invalid) > 5 else ""
    raise FtuiError(
        f"{len(report.invalid)} of {report.records} records in {report.path} are invalid "
        f"({first}{more}; first reason: {report.invalid[0].reason})",
        f"fix them (`ftui data check {report.path}` lists every one), or pass --skip-invalid "
        "to train on the valid records only",
    )


def split_indices(n: int, eval_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic train/eval split of n items for a seed (both lists sorted)."""
    if not 0.0 <= eval_fraction < 1.0:
        raise FtuiError(
            f"eval fraction {eval_fraction} is not in [0, 1)", "use e.g. --eval-fraction 0.05"
        )
    if eval_fraction == 0.0 or n == 0:
        return list(range(n)), []
    n_eval = max(1, round(n * eval_fraction))
    if n_eval >= n:
        raise FtuiError(
            f"{n} valid records are too few to hold out {eval_fraction:.0%} for evaluation",
            "use a smaller eval fraction or more data",
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[n_eval:]), sorted(order[:n_eval])


def _to_dataset(rows: dict[str, list[list[int]]]) -> Any:
    from datasets import Dataset  # type: ignore[import-untyped]

    return Dataset.from_dict(rows)


def build_datasets(
    path: Path | str,
    tokenizer: Any,
    *,
    fmt: str = "auto",
    seq_len: int,
    eval_fraction: float = 0.0,
    seed: int = 0,
    skip_invalid: bool = False,
    mode: str = "sft",
) -> tuple[Any, Any, DataReport]:
    """Tokenised `datasets.Dataset`s (input_ids, attention_mask, labels): (train, eval or None,
    report). mode "sft" (chat formats), "pretrain" (text) or "auto" (by the format)."""
    _check_seq_len(seq_len)
    if mode not in MODES:
        raise FtuiError(f"unknown training mode {mode!r}", f"use one of: {', '.join(MODES)}")
    if not 0.0 <= eval_fraction < 1.0:
        raise FtuiError(
            f"eval fraction {eval_fraction} is not in [0, 1)", "use e.g. --eval-fraction 0.05"
        )
    loaded = load_samples(path, fmt=fmt)
    if loaded.format == "preference":
        raise FtuiError(
            f"{loaded.path} holds preference pairs (chosen/rejected): supervised fine-tuning on "
            "them is not supported yet",
            "train on the chosen answers (convert each pair to a conversation that ends with its "
            "chosen response), or wait for the DPO trainer",
        )
    if mode == "auto":
        mode = "pretrain" if loaded.format == "text" else "sft"
    if mode == "pretrain" and loaded.format != "text":
        raise FtuiError(
            f"pre-training needs plain text records, but {loaded.path} is {loaded.format}",
            'use a dataset of {"text": ...} records, or train in SFT mode',
        )
    if mode == "sft" and loaded.format == "text":
        raise FtuiError(
            f"{loaded.path} holds plain text ({{'text': ...}}): that is for continued "
            "pre-training, not SFT",
            "train in pre-training mode, or use a chat/instruction dataset",
        )
    if mode == "pretrain":
        samples = loaded.samples
        docs = _document_ids(tokenizer, [s.text or "" for s in samples])
        report = _report(
            loaded,
            samples,
            [len(d) for d in docs],
            [],
            seq_len=seq_len,
            tokenizer=tokenizer,
            fallback=False,
        )
        if report.invalid and not skip_invalid:
            _refuse_invalid(report)
        if not samples:
            raise FtuiError(f"{loaded.path} has no valid records", "fix the dataset")
        train_idx, eval_idx = split_indices(len(samples), eval_fraction, seed)

        def blocks(indices: list[int]) -> dict[str, list[list[int]]]:
            stream = [t for i in indices for t in docs[i]]
            chunks = [stream[i : i + seq_len] for i in range(0, len(stream), seq_len)]
            return {
                "input_ids": chunks,
                "attention_mask": [[1] * len(c) for c in chunks],
                "labels": [list(c) for c in chunks],
            }

        train_rows = blocks(train_idx)
        eval_rows = blocks(eval_idx) if eval_idx else None
        report.mode = "pretrain"
    else:
        encoded: list[EncodedConversation] = []
        kept: list[Sample] = []
        extra: list[InvalidRecord] = []
        fallback = not _has_chat_template(tokenizer)
        for sample in loaded.samples:
            try:
                enc = encode_conversation(sample.turns, tokenizer)
            except InvalidRecordError as exc:
                extra.append(
                    InvalidRecord(
                        sample.index, sample.line, sample.file, sample.row, exc.reason, sample.where
                    )
                )
                continue
            encoded.append(enc)
            kept.append(sample)
        report = _report(
            loaded,
            kept,
            [len(e.input_ids) for e in encoded],
            extra,
            seq_len=seq_len,
            tokenizer=tokenizer,
            fallback=fallback,
        )
        if report.invalid and not skip_invalid:
            _refuse_invalid(report)
        rows = [e.truncate(seq_len) for e in encoded]
        usable = [k for k, row in enumerate(rows) if any(x != IGNORE_INDEX for x in row["labels"])]
        report.no_labels = len(rows) - len(usable)
        if report.no_labels:
            report.notes.append(
                f"{report.no_labels} samples have no answer token left after truncation to "
                f"{seq_len} tokens and are left out (raise seq_len to keep them)"
            )
        if not usable:
            raise FtuiError(
                f"{loaded.path} has no sample with an answer within {seq_len} tokens",
                "fix the dataset or raise the sequence length",
            )
        train_idx, eval_idx = split_indices(len(usable), eval_fraction, seed)

        def pick(indices: list[int]) -> dict[str, list[list[int]]]:
            chosen = [rows[usable[i]] for i in indices]
            return {
                key: [row[key] for row in chosen]
                for key in ("input_ids", "attention_mask", "labels")
            }

        train_rows = pick(train_idx)
        eval_rows = pick(eval_idx) if eval_idx else None
        report.mode = "sft"
    report.train_rows = len(train_rows["input_ids"])
    report.eval_rows = len(eval_rows["input_ids"]) if eval_rows is not None else None
    train = _to_dataset(train_rows)
    evaluation = _to_dataset(eval_rows) if eval_rows is not None else None
    return train, evaluation, report


__all__ = [
    "FALLBACK_CHAT_TEMPLATE",
    "FORMATS",
    "IGNORE_INDEX",
    "DataReport",
    "DatasetUnusableError",
    "EncodedConversation",
    "InvalidRecord",
    "InvalidRecordError",
    "LengthSummary",
    "LoadedDataset",
    "RawRecord",
    "Sample",
    "assistant_spans",
    "build_datasets",
    "check_dataset",
    "classify_record",
    "dataset_files",
    "detect_format",
    "encode_conversation",
    "length_histogram",
    "length_summary",
    "load_samples",
    "load_tokenizer",
    "normalize_record",
    "read_records",
    "split_indices",
    "tokenize_conversation",
    "tokenize_pretraining",
]
