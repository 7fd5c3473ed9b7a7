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
    .run.lock       held while a command starts, resumes or stops the run (one at a time)
    .state.lock     held for each read-modify-write of state.json (milliseconds)

JSONL files are append-only, one flushed line per record; readers tail by byte offset and
tolerate a partial last line. A run is a folder directly under the runs root holding a
state.json; references to anything else are refused before anything is read or written. A
damaged state.json (empty, not JSON, not UTF-8) is rebuilt from events.jsonl, spec.yaml and
command.json, and the rebuilt state says so (`damaged`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
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
    except (OSError, ValueError):  # ValueError: bad JSON and bytes that are not UTF-8
        return {}
    return data if isinstance(data, dict) else {}


# How long a command waits for a lock another process holds before it says so (the holders
# keep them for milliseconds; a start or resume for well under a second).
# FTUI_LOCK_SECONDS overrides both (tests).
STATE_LOCK_SECONDS = 15.0
RUN_LOCK_SECONDS = 10.0


def read_spec(run: RunDir) -> dict[str, Any]:
    """spec.yaml as written at launch, as plain data; {} when missing or unreadable. Not
    validated: a spec written by an older ftui (no budget, `mode` for `stage`) still reads."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~8x faster (ftui runs)
    try:
        data = yaml.load(run.spec.read_text(encoding="utf-8"), Loader=loader)
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _lock_seconds(default: float) -> float:
    override = os.environ.get("FTUI_LOCK_SECONDS")
    try:
        return float(override) if override else default
    except ValueError:
        return default


class RunBusy(FtuiError):
    """A lock of the run stayed held past the timeout."""


@contextlib.contextmanager
def _flock(path: Path, timeout: float, busy: str) -> Iterator[None]:
    """An exclusive flock on `path`, polled (never a blocking wait) until `timeout`."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RunBusy(busy, "wait a moment and try again") from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


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

    # -- locks ---------------------------------------------------------------------------------
    def operation_lock(
        self, timeout: float | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """Held while a command starts, resumes or stops the run: they exclude each other, and
        every check they make happens under it."""
        return _flock(
            self.path / ".run.lock",
            _lock_seconds(RUN_LOCK_SECONDS) if timeout is None else timeout,
            f"another ftui command is starting, resuming or stopping run {self.run_id}",
        )

    def try_operation_lock(self) -> contextlib.AbstractContextManager[None]:
        """The operation lock if it is free now; raises RunBusy at once otherwise."""
        return self.operation_lock(timeout=0.0)

    def _state_lock(self, timeout: float) -> contextlib.AbstractContextManager[None]:
        return _flock(
            self.path / ".state.lock",
            timeout,
            f"the state of run {self.run_id} stayed locked for {timeout:.0f} s",
        )

    # -- state ---------------------------------------------------------------------------------
    def load_state(self) -> tuple[dict[str, Any], str | None]:
        """(state, what is wrong with state.json or None). A damaged file gives the state
        rebuilt from the run's other files, marked `damaged`."""
        try:
            raw = self.state.read_bytes()
        except FileNotFoundError:
            return {}, None  # a run being created: nothing written yet
        except OSError as exc:
            unreadable = f"state.json cannot be read ({exc.strerror or exc})"
            return rebuild_state(self, unreadable), unreadable
        problem = _state_problem(raw)
        if problem is None:
            data: dict[str, Any] = json.loads(raw.decode("utf-8"))
            return data, None
        return rebuild_state(self, problem), problem

    def read_state(self) -> dict[str, Any]:
        return self.load_state()[0]

    def modify_state(
        self,
        decide: Callable[[dict[str, Any]], dict[str, Any] | None],
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Read-modify-write under the state lock: `decide(state)` returns the changes to make
        (None: none). Launcher, supervisor, trainer and commands all write through here."""
        with self._state_lock(_lock_seconds(STATE_LOCK_SECONDS) if timeout is None else timeout):
            state, problem = self.load_state()
            changes = decide(state)
            if changes is None:
                return state
            if problem is not None:
                self._keep_damaged_copy()
            state.update(changes)
            state["updated_at"] = time.time()
            write_json_atomic(self.state, state)
        return state

    def update_state(self, **changes: Any) -> dict[str, Any]:
        return self.modify_state(lambda _state: changes)

    def _keep_damaged_copy(self) -> None:
        """Before a rebuilt state replaces a damaged file, keep the damaged bytes beside it."""
        copy = self.path / "state.json.damaged"
        with contextlib.suppress(OSError):
            if not copy.exists():
                copy.write_bytes(self.state.read_bytes())

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


def _is_run(path: Path) -> bool:
    """A run folder ftui made: a real folder (not a link) holding a state.json."""
    return path.is_dir() and not path.is_symlink() and (path / "state.json").is_file()


def _looks_like_path(ref: str) -> bool:
    return os.sep in ref or ref in (".", "..") or ref.startswith("~")


def find_run(ref: str, root: Path | None = None) -> RunDir:
    """A run by id, unique id prefix, or path; only ever a run folder under the runs root.
    Nothing is read from or written to a folder this refuses."""
    root = root or runs_root()
    listing = "list the runs with `ftui runs`"
    if not ref.strip():
        raise FtuiError("no run named: the run reference is empty", listing)
    if _looks_like_path(ref):
        path = Path(os.path.abspath(Path(ref).expanduser()))  # ".." collapsed
        try:
            real_root = root.resolve()
            inside = path.parent.resolve() == real_root and path.resolve().parent == real_root
        except (OSError, RuntimeError):
            inside = False
        if inside and _is_run(path):
            return RunDir(root / path.name)
        raise FtuiError(
            f"{ref!r} is not a run: a run is a folder ftui made under {root}",
            f"name the run by its id; {listing}",
        )
    exact = root / ref
    if _is_run(exact):
        return RunDir(exact)
    matches = sorted(p for p in iter_run_paths(root) if p.name.startswith(ref))
    if len(matches) == 1:
        return RunDir(matches[0])
    if not matches:
        raise FtuiError(f"no run {ref!r} under {root}", listing)
    names = ", ".join(p.name for p in matches[:5])
    raise FtuiError(f"{ref!r} matches several runs: {names}", "give more of the run id")


def iter_run_paths(root: Path | None = None) -> Iterator[Path]:
    root = root or runs_root()
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False) and os.path.isfile(
            os.path.join(entry.path, "state.json")
        ):
            yield Path(entry.path)


# -- a damaged state.json ------------------------------------------------------------------------


def _state_problem(raw: bytes) -> str | None:
    if not raw.strip():
        return "state.json is empty"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "state.json is not UTF-8 text"
    try:
        data = json.loads(text)
    except ValueError:
        return "state.json is not valid JSON"
    return None if isinstance(data, dict) else "state.json does not hold a JSON object"


def rebuild_state(run: RunDir, problem: str) -> dict[str, Any]:
    """What can be known of a run whose state.json is damaged: its spec and launch command,
    then its lifecycle replayed from events.jsonl (processes, steps, checkpoints, the end)."""
    state: dict[str, Any] = {"run_id": run.run_id, "status": "starting", "damaged": problem}
    spec = _read_yaml(run.spec)
    training = spec.get("training") if isinstance(spec.get("training"), dict) else {}
    if spec.get("model"):
        model = str(spec["model"])
        state["model"] = Path(model).name if spec.get("model_path") else model
    if training:
        state["method"] = training.get("method", "?")
        state["num_gpus"] = training.get("num_gpus", 1)
    command = read_json(run.command)
    if command.get("launcher"):
        state["launcher"] = command["launcher"]
    plan = read_json(run.plan)
    if plan:
        state["plan_summary"] = plan
    with contextlib.suppress(OSError):
        state["created_at"] = run.path.stat().st_mtime
    for record in JsonlTail(run.events).read():
        _replay(state, record)
    return state


def _replay(state: dict[str, Any], record: dict[str, Any]) -> None:
    kind, t = record.get("event"), record.get("t")
    if kind == "created":
        state["created_at"] = t
    elif kind == "supervisor_started":
        state.update(supervisor_pid=record.get("pid"),
                     supervisor_create_time=record.get("create_time"))  # fmt: skip
    elif kind == "launched":
        state.update(launcher_pid=record.get("pid"), pgid=record.get("pid"),
                     launcher_create_time=record.get("create_time"))  # fmt: skip
    elif kind == "train_begin":
        state["status"] = "running"
        for key in ("max_steps", "trainer_pid", "trainer_pgid", "trainer_create_time"):
            if key in record:
                state[key] = record[key]
    elif kind == "checkpoint":
        state.update(last_checkpoint=record.get("path"), last_checkpoint_step=record.get("step"))
    elif kind in ("stop_requested", "stop_requested_by_user", "stop_now"):
        state["status"] = "stopping"
    elif kind in ("nan", "oom", "error"):
        state["failure"] = kind
    elif kind == "resume":
        state.update(status="starting", failure=None, resumed_from=record.get("checkpoint"))
    elif kind in ("finished", "stopped", "exited"):
        final = {"finished": "completed", "stopped": "stopped"}.get(kind, record.get("status"))
        state.update(status=final, finished_at=t)
        if kind == "exited":
            state.update(exit_code=record.get("returncode"), failure=record.get("failure"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        import yaml

        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except Exception:  # unreadable, or a YAML error: nothing to learn from it
        return {}
    return data if isinstance(data, dict) else {}
