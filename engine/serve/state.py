"""A run's server in files: `RUN/serve/`, so every ftui session can list and stop it.

    serve/server.json      what runs where: pid (with its create time), host, port, engine,
                           the default model, whether a key is required (never the key), status
    serve/requests.jsonl   one line per completion request: model, tokens, latency, outcome
    serve/server.log       the detached server's output

A server belongs to the run it serves: it lives and is found in the run's folder (inside
ftui's own folders, like everything ftui writes), one server per run at a time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import FtuiError
from engine.run.rundir import RunDir, append_jsonl, iter_run_paths, read_json, write_json_atomic

LIVE = ("starting", "loading", "ready", "running")  # running: a vLLM server (its own readiness)
STOP_WAIT_S = 10.0  # a stopping server finishes open answers (5 s) and exits
TAIL_BYTES = 2_000_000  # the listing reads at most this much of requests.jsonl


@dataclass(frozen=True)
class ServeDir:
    run: RunDir

    @property
    def path(self) -> Path:
        return self.run.path / "serve"

    @property
    def record(self) -> Path:
        return self.path / "server.json"

    @property
    def requests(self) -> Path:
        return self.path / "requests.jsonl"

    @property
    def log(self) -> Path:
        return self.path / "server.log"

    def read(self) -> dict[str, Any]:
        return read_json(self.record)

    def write(self, **fields: Any) -> dict[str, Any]:
        """Merge `fields` into server.json (atomic; only the server and `ftui stop` write)."""
        data = {**self.read(), **fields, "updated_at": time.time()}
        write_json_atomic(self.record, data)
        return data

    def start_record(self, **fields: Any) -> dict[str, Any]:
        """A fresh server.json for a server starting now (the last one's is replaced)."""
        self.path.mkdir(parents=True, exist_ok=True)
        data = {"run_id": self.run.run_id, "started_at": time.time(), **fields}
        write_json_atomic(self.record, data)
        return data

    def log_request(self, record: dict[str, Any]) -> None:
        append_jsonl(self.requests, {"t": time.time(), **record})


def process_alive(record: dict[str, Any]) -> bool:
    from engine.run.processes import pid_alive

    return pid_alive(record.get("pid"), record.get("create_time"))


def status_of(record: dict[str, Any]) -> str:
    """starting, loading, ready, running, stopped, failed; `dead` when it claims to run but its
    process is gone."""
    status = str(record.get("status") or "unknown")
    if status in LIVE and not process_alive(record):
        return "dead"
    return status


def live_server(run: RunDir) -> dict[str, Any] | None:
    """The server.json of the run's server when its process runs, else None."""
    record = ServeDir(run).read()
    return record if record and status_of(record) in LIVE else None


def read_requests(serve: ServeDir, max_bytes: int = TAIL_BYTES) -> list[dict[str, Any]]:
    """The last requests logged (up to `max_bytes` of the file), oldest first."""
    import json

    try:
        with serve.requests.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return []
    lines = data.split(b"\n")
    if size > max_bytes:
        lines = lines[1:]  # the first line was cut
    records = []
    for line in lines:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


def percentile(values: list[float], share: float) -> float | None:
    """The `share` (0..1) percentile of `values`, linearly interpolated; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    at = share * (len(ordered) - 1)
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def summarize(requests: list[dict[str, Any]], since: float | None = None) -> dict[str, Any]:
    """Request count, errors, cancelled answers, medians of time to first token, total time and
    decode tokens/s, the 95th percentiles of both times, and tokens generated, over the
    requests since `since` (this server's). Latency is a completed answer's total time, from
    its arrival to its last token (queueing included)."""
    if since is not None:
        requests = [r for r in requests if float(r.get("t") or 0) >= since]

    def values(key: str) -> list[float]:
        return [float(r[key]) for r in requests if isinstance(r.get(key), (int, float))]

    def median(key: str) -> float | None:
        found = values(key)
        return statistics.median(found) if found else None

    return {
        "ttft_s_p95": percentile(values("ttft_s"), 0.95),
        "total_s_p95": percentile(values("total_s"), 0.95),
        "requests": len(requests),
        "errors": sum(1 for r in requests if int(r.get("status") or 200) >= 400),
        "cancelled": sum(1 for r in requests if r.get("finish_reason") == "cancelled"),
        "completion_tokens": sum(int(r.get("completion_tokens") or 0) for r in requests),
        "ttft_s_median": median("ttft_s"),
        "total_s_median": median("total_s"),
        "tokens_per_s_median": median("tokens_per_s"),
        "last_request_at": max((float(r.get("t") or 0) for r in requests), default=None),
    }


@dataclass(frozen=True)
class ServerInfo:
    run_id: str
    status: str
    record: dict[str, Any]
    stats: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "status": self.status, **self.record, **self.stats}


def server_info(run: RunDir) -> ServerInfo | None:
    serve = ServeDir(run)
    record = serve.read()
    if not record:
        return None
    stats = summarize(read_requests(serve), since=record.get("started_at"))
    return ServerInfo(run.run_id, status_of(record), record, stats)


def iter_servers(root: Path | None = None) -> Iterator[ServerInfo]:
    """Every run's server that left a record, live or not."""
    for path in iter_run_paths(root):
        info = server_info(RunDir(path))
        if info is not None:
            yield info


def list_servers(root: Path | None = None) -> list[ServerInfo]:
    """Live servers first, then the newest."""
    infos = list(iter_servers(root))
    return sorted(
        infos,
        key=lambda i: (i.status not in LIVE, -float(i.record.get("started_at") or 0)),
    )


def stop_server(run: RunDir, wait_s: float = STOP_WAIT_S) -> str:
    """SIGTERM the run's server (it finishes open answers within seconds), SIGKILL its
    session's group if it has not exited after `wait_s`; record it stopped."""
    serve = ServeDir(run)
    record = serve.read()
    if not record or status_of(record) not in LIVE:
        raise FtuiError(f"run {run.run_id} has no server running", "start one: ftui serve RUN")
    pid = int(record["pid"])
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and process_alive(record):
        time.sleep(0.1)
    killed = process_alive(record)
    if killed and record.get("detached"):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # a detached server leads its own session's group
    elif killed:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    serve.write(status="stopped", stopped_at=time.time())
    where = record.get("url", "")
    return f"stopped the server of {run.run_id} {where}".rstrip() + (" (killed)" if killed else "")
