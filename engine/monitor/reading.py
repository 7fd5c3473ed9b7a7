"""Reading a run's growing log files by byte offset, fast even when they are big.

`JsonlSource` tails one JSONL file (metrics, GPU samples, events) and notices when it was
replaced; a file over the size limit is opened in two parts so the first frame of a long run
comes fast: its last bytes are read line by line, the part before is sampled by `sample_jsonl`
(a few thousand lines picked at even byte offsets, plus the lines holding given needles, found
with `bytes.find` at C speed). `TextTail` follows the last lines of a text log (stdout.log).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from engine.run.rundir import JsonlTail


def _line_start_after(path: Path, offset: int) -> int:
    """The offset of the first line that starts at or after `offset`."""
    if offset <= 0:
        return 0
    with path.open("rb") as fh:
        fh.seek(offset - 1)
        while True:
            block = fh.read(65536)
            if not block:
                return fh.tell()
            cut = block.find(b"\n")
            if cut >= 0:
                return fh.tell() - len(block) + cut + 1


def sample_jsonl(
    path: Path,
    start: int,
    end: int,
    samples: int,
    needles: Sequence[bytes] = (),
    chunk_bytes: int = 8 << 20,
) -> Iterator[dict[str, Any]]:
    """About `samples` lines of `path[start:end]` at even byte offsets, plus the lines that
    contain one of `needles` (at most about `samples` of those too), in file order.

    `start` and `end` must be line starts. With needles it reads the range once in chunks
    (300 MB in well under a second); without, it only seeks to the picked lines."""
    if end <= start or samples <= 0:
        return
    if not needles:
        yield from _sample_by_seeking(path, start, end, samples)
        return
    stride = max(1.0, (end - start) / samples)
    next_pick = float(start)
    with path.open("rb") as fh:
        fh.seek(start)
        pos = start
        while pos < end:
            data = fh.read(min(chunk_bytes, end - pos))
            if not data:
                return
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # one line longer than a chunk: take it whole
                more = fh.readline()
                data, cut = data + more, len(data) + len(more)
            elif pos + len(data) < end:
                fh.seek(pos + cut)
            chunk_end = pos + cut
            starts: set[int] = set()
            while next_pick < chunk_end:
                rel = int(next_pick) - pos
                line_start = 0 if rel <= 0 else data.rfind(b"\n", 0, rel) + 1
                starts.add(line_start)
                next_pick += stride
            special: list[int] = []
            for needle in needles:
                hit = data.find(needle, 0, cut)
                while hit >= 0:
                    line_start = data.rfind(b"\n", 0, hit) + 1
                    special.append(line_start)
                    line_end = data.find(b"\n", hit, cut)
                    hit = data.find(needle, line_end, cut) if line_end >= 0 else -1
            budget = max(1, math.ceil(samples * cut / (end - start)))
            if len(special) > budget:
                special.sort()
                step = len(special) / budget
                special = [special[int(i * step)] for i in range(budget)]
            starts.update(special)
            for line_start in sorted(starts):
                line_end = data.find(b"\n", line_start, cut)
                record = _record(data[line_start : line_end if line_end >= 0 else cut])
                if record is not None:
                    yield record
            pos = chunk_end


def _sample_by_seeking(path: Path, start: int, end: int, samples: int) -> Iterator[dict[str, Any]]:
    stride = (end - start) / samples
    last_start = -1
    with path.open("rb") as fh:
        for k in range(samples):
            pos = start + int(k * stride)
            fh.seek(pos)
            if pos > start:
                fh.readline()  # the rest of the line the seek landed in
            line_start = fh.tell()
            if line_start >= end or line_start == last_start:
                continue
            last_start = line_start
            record = _record(fh.readline())
            if record is not None:
                yield record


def _record(line: bytes) -> dict[str, Any] | None:
    """One JSONL line as a dict, or None (a cut, garbled or non-object line)."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


class JsonlSource:
    """One JSONL file: an offset tail that notices when the file was replaced (a resume
    rewrites metrics.jsonl) and opens big files as a sampled prefix plus an exact tail."""

    def __init__(
        self, path: Path, tail_bytes: int, samples: int, needles: Sequence[bytes] = ()
    ) -> None:
        self.path = path
        self.tail_bytes = tail_bytes
        self.samples = samples
        self.needles = tuple(needles)
        self.tail: JsonlTail | None = None
        self.inode: int | None = None
        self.sampled_lines = 0

    def poll(self, big_file_bytes: int) -> tuple[bool, Iterable[dict[str, Any]]]:
        """(started over, records in file order)."""
        try:
            stat = self.path.stat()
        except OSError:
            return False, []
        tail = self.tail
        if tail is not None and stat.st_ino == self.inode and stat.st_size >= tail.offset:
            return False, tail.read()
        tail = self.tail = JsonlTail(self.path)
        self.inode = stat.st_ino
        if stat.st_size <= big_file_bytes:
            return True, tail.read()
        split = _line_start_after(self.path, stat.st_size - self.tail_bytes)
        tail.offset = split
        sampled = list(sample_jsonl(self.path, 0, split, self.samples, self.needles))
        self.sampled_lines = len(sampled)
        return True, [*sampled, *tail.read()]


class TextTail:
    """The last lines of a growing text log (stdout.log), read by offset. Progress bars that
    redraw with carriage returns keep only their last state, as a terminal would show."""

    def __init__(self, path: Path, first_read_bytes: int = 65536) -> None:
        self.path = path
        self.offset: int | None = None
        self._inode: int | None = None
        self._partial = b""
        self._first_read_bytes = first_read_bytes

    def read(self) -> tuple[bool, list[str]]:
        """(started over, new complete lines)."""
        try:
            stat = self.path.stat()
        except OSError:
            return False, []
        reset = self.offset is None or stat.st_ino != self._inode or stat.st_size < self.offset
        if reset:
            self._partial = b""
            self.offset = max(0, stat.st_size - self._first_read_bytes)
            self._inode = stat.st_ino
        assert self.offset is not None
        if stat.st_size == self.offset:
            return reset, []
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read(stat.st_size - self.offset)
        first_read = reset and self.offset > 0
        self.offset += len(chunk)
        parts = (self._partial + chunk).split(b"\n")
        self._partial = parts.pop()
        if first_read and parts:
            parts = parts[1:]  # the first line was cut by the seek
        return reset, [p.decode("utf-8", "replace").rstrip("\r").rsplit("\r", 1)[-1] for p in parts]
