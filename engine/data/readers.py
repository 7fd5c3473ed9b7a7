"""engine.data.readers: one part of `engine.data` (see the package docstring)."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.data.records import (
    _JSON_CELL_FIELDS,
    _REQUIRED_COLUMNS,
    CSV_SUFFIXES,
    FORMATS,
    JSON_SUFFIXES,
    PARQUET_SUFFIXES,
    SUPPORTED_SUFFIXES,
    DatasetUnusableError,
    RawRecord,
    _normalise_format,
)
from engine.errors import FtuiError


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


def _stat_problem(path: Path) -> DatasetUnusableError | None:
    """Why `path` cannot be opened at all (missing, a symlink loop, a dangling link, no access)."""
    try:
        path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return DatasetUnusableError(
                path,
                "it is a symbolic link loop (the link points, directly or through others, back "
                "at itself)",
                f"point the link at the real data file (ls -l {path} shows its target)",
            )
        if path.is_symlink():
            return DatasetUnusableError(
                path,
                f"it is a symbolic link to {os.readlink(path)}, which does not exist",
                "point the link at an existing data file, or pass the file itself",
            )
        if exc.errno == errno.ENOENT:
            return DatasetUnusableError(
                path, "it does not exist", "pass the path of a JSON, JSONL, CSV or Parquet file"
            )
        return DatasetUnusableError(
            path, f"cannot open it ({exc.strerror})", "check the path and its permissions"
        )
    return None


def _skip_reason(item: Path) -> str | None:
    """Why a folder entry is not read as data (None: it is a data file)."""
    problem = _stat_problem(item)
    if problem is not None:
        return problem.problem
    if item.is_dir():
        return None
    if not item.is_file():
        return "not a regular file (a FIFO, socket or device)"
    if item.suffix.lower() not in SUPPORTED_SUFFIXES:
        return f"unsupported file type {item.suffix or '(no extension)'!r}"
    return None


def scan_dataset(path: Path) -> tuple[list[Path], list[str]]:
    """(data files, skipped entries with why) of a dataset: the file itself, or a folder's
    supported files, sorted (recursively; hidden entries are ignored silently)."""
    problem = _stat_problem(path)
    if problem is not None:
        raise problem
    if path.is_file():
        return [path], []
    if not path.is_dir():
        raise DatasetUnusableError(
            path, "it is not a regular file (a FIFO, socket or device)", "pass a data file"
        )
    found: list[Path] = []
    skipped: list[str] = []
    for item in sorted(path.rglob("*")):
        relative = item.relative_to(path)
        if any(part.startswith(".") for part in relative.parts):
            continue
        reason = _skip_reason(item)
        if reason is not None:
            skipped.append(f"{relative}: {reason}")
        elif item.is_file():
            found.append(item)
    if not found:
        listed = f" (skipped: {'; '.join(skipped[:5])})" if skipped else ""
        raise DatasetUnusableError(
            path,
            f"the folder holds no .json, .jsonl, .csv or .parquet files{listed}",
            "put the data files in the folder, or pass one file",
        )
    return found, skipped


def dataset_files(path: Path) -> list[Path]:
    """The data files of a dataset: the file itself, or a folder's supported files, sorted."""
    return scan_dataset(path)[0]


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
    records, names, _skipped = read_dataset(path, fmt=fmt)
    return records, names


def read_dataset(
    path: Path | str, *, fmt: str = "auto"
) -> tuple[list[RawRecord], list[str], list[str]]:
    """(records, the data files' names, entries of a folder skipped with why)."""
    path = Path(path)
    fmt = _normalise_format(fmt)
    files, skipped = scan_dataset(path)
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
    return records, names, skipped
