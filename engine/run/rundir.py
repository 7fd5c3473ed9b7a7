"""The run directory: the one contract between launcher, trainer and dashboards.

    spec.yaml       the resolved spec, frozen at launch
    plan.json       the estimate the run was launched with
    command.json    the exact argv (+ generated accelerate.yaml / deepspeed.json)
    state.json      status, pids, times, exit code, failure class (atomic writes)
    metrics.jsonl   one object per logging step (rank 0)
    gpu.jsonl       NVML samples every few seconds
    events.jsonl    lifecycle events
    stdout.log      all ranks' output
    control/        request files: stop, save-now
    checkpoints/    HF Trainer checkpoints;  final/  the final adapter or model

JSONL files are append-only, one flushed line per record; readers tail by byte offset and
tolerate a partial last line.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import FtuiError
from engine.paths import runs_root

STATUSES = ("starting", "running", "stopping", "completed", "failed", "stopped")
FINAL = ("completed", "failed", "stopped")
FAILURES = ("oom", "nan", "killed", "error", "launcher")


def _clean(value: Any) -> Any:
    """JSON without NaN/inf (strict readers reject them): they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(_clean(data), fh, indent=2, allow_nan=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    line = json.dumps(_clean(record), allow_nan=False) + "\n"
    with path.open("a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


class JsonlTail:
    """Reads new complete lines of a JSONL file from a byte offset; keeps a partial last line
    for later; restarts when the file was truncated or replaced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self._inode: int | None = None
        self._buffer = b""

    def read(self, max_bytes: int | None = None) -> list[dict[str, Any]]:
        try:
            stat = self.path.stat()
        except OSError:
            return []
        if self._inode is not None and (stat.st_ino != self._inode or stat.st_size < self.offset):
            self.offset, self._buffer = 0, b""
        self._inode = stat.st_ino
        if stat.st_size == self.offset:
            return []
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read(max_bytes) if max_bytes else fh.read()
        self.offset += len(chunk)
        data = self._buffer + chunk
        lines = data.split(b"\n")
        self._buffer = lines.pop()
        records = []
        for line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(record, dict):
                records.append(record)
        return records


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def spec(self) -> Path:
        return self.path / "spec.yaml"

    @property
    def plan(self) -> Path:
        return self.path / "plan.json"

    @property
    def command(self) -> Path:
        return self.path / "command.json"

    @property
    def state(self) -> Path:
        return self.path / "state.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def gpu(self) -> Path:
        return self.path / "gpu.jsonl"

    @property
    def events(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def stdout(self) -> Path:
        return self.path / "stdout.log"

    @property
    def control(self) -> Path:
        return self.path / "control"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def final(self) -> Path:
        return self.path / "final"

    # -- state ---------------------------------------------------------------------------------
    def read_state(self) -> dict[str, Any]:
        return read_json(self.state)

    def update_state(self, **changes: Any) -> dict[str, Any]:
        """Read-modify-write under a lock: launcher, supervisor and trainer all update it."""
        import fcntl

        with (self.path / ".state.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.read_state()
            state.update(changes)
            state["updated_at"] = time.time()
            write_json_atomic(self.state, state)
        return state

    def event(self, kind: str, **fields: Any) -> None:
        append_jsonl(self.events, {"t": time.time(), "event": kind, **fields})

    # -- control -------------------------------------------------------------------------------
    def request(self, what: str) -> Path:
        """Ask the trainer for `stop` or `save-now`; it polls control/ every step."""
        if what not in ("stop", "save-now"):
            raise ValueError(what)
        self.control.mkdir(parents=True, exist_ok=True)
        path = self.control / what
        path.write_text(str(time.time()))
        return path

    def checkpoints_complete(self) -> list[Path]:
        """Checkpoints that finished saving, oldest first (skips ones still being written)."""
        found = []
        if not self.checkpoints.is_dir():
            return []
        for entry in self.checkpoints.iterdir():
            match = re.fullmatch(r"checkpoint-(\d+)", entry.name)
            if not match or not entry.is_dir():
                continue
            if (entry / "checkpoint-is-incomplete.txt").exists():
                continue
            if not (entry / "trainer_state.json").is_file():
                continue
            found.append((int(match.group(1)), entry))
        return [p for _, p in sorted(found)]

    def last_checkpoint(self) -> Path | None:
        complete = self.checkpoints_complete()
        return complete[-1] if complete else None


def new_run_id(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "run"
    return f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def create_run_dir(name: str, root: Path | None = None) -> RunDir:
    root = root or runs_root()
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(10):
        path = root / new_run_id(name)
        try:
            path.mkdir()
        except FileExistsError:
            continue
        (path / "control").mkdir()
        return RunDir(path)
    raise FtuiError(f"could not create a run directory under {root}", "check its permissions")


def find_run(ref: str, root: Path | None = None) -> RunDir:
    """A run by id, unique id prefix, or path."""
    path = Path(ref).expanduser()
    if path.is_dir() and (path / "state.json").exists():
        return RunDir(path.absolute())
    root = root or runs_root()
    exact = root / ref
    if exact.is_dir():
        return RunDir(exact)
    matches = sorted(p for p in iter_run_paths(root) if p.name.startswith(ref))
    if len(matches) == 1:
        return RunDir(matches[0])
    if not matches:
        raise FtuiError(f"no run {ref!r} under {root}", "list the runs with `ftui runs`")
    names = ", ".join(p.name for p in matches[:5])
    raise FtuiError(f"{ref!r} matches several runs: {names}", "give more of the run id")


def iter_run_paths(root: Path | None = None) -> Iterator[Path]:
    root = root or runs_root()
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for entry in entries:
        if entry.is_dir() and os.path.exists(os.path.join(entry.path, "state.json")):
            yield Path(entry.path)
