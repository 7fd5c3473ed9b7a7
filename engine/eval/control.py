"""Stopping a detached evaluation: `ftui stop RUN --eval`.

The evaluation leads a session of its own (`start_detached`); SIGTERM makes it write what it
measured so far (`results.json` with `"partial": true`) and record itself stopped. One that has
not exited after `wait_s` has its whole process group killed and is recorded stopped here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any

from engine.eval.request import EvalDir, EvalError, evals_root
from engine.run.rundir import RunDir, write_json_atomic

STOP_WAIT_S = 10.0  # a stopping evaluation finishes the batch or the answer it is on and exits
START_WAIT_S = 5.0  # an evaluation just started has this long to write its pid
LIVE = ("starting", "running")


def running_eval(run: RunDir) -> EvalDir | None:
    """The run's newest evaluation whose process runs (or is starting), else None."""
    from engine.eval.runner import eval_status

    root = evals_root(run)
    if not root.is_dir():
        return None
    folders = sorted(p for p in root.iterdir() if p.is_dir() and (p / "request.json").is_file())
    for path in reversed(folders):
        folder = EvalDir(path)
        if eval_status(folder).get("status") in LIVE:
            return folder
    return None


def _pid_of(folder: EvalDir) -> tuple[int, Any] | None:
    deadline = time.monotonic() + START_WAIT_S
    while True:
        status = folder.read_status()
        if isinstance(status.get("pid"), int):
            return int(status["pid"]), status.get("pid_create_time")
        if status.get("status") not in LIVE or time.monotonic() > deadline:
            return None
        time.sleep(0.1)


def stop_eval(run: RunDir, wait_s: float = STOP_WAIT_S) -> str:
    """SIGTERM the run's running evaluation (it keeps its partial results), kill its process
    group if it has not exited after `wait_s`; what happened, in one line."""
    from engine.eval.runner import _alive

    folder = running_eval(run)
    if folder is None:
        raise EvalError(
            f"run {run.run_id} has no evaluation running",
            f"see the last one with: ftui eval {run.run_id} --status",
        )
    found = _pid_of(folder)
    killed = False
    if found is not None:
        pid, created = found
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and _alive(pid, created):
            time.sleep(0.1)
        if _alive(pid, created):
            killed = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)  # it leads its own session's group
    status = folder.read_status()
    if status.get("status") != "stopped":  # killed, or stopped before it wrote its pid
        write_json_atomic(folder.status, {**status, "status": "stopped", "kept": [],
                                          "finished_at": time.time(),
                                          "updated_at": time.time()})  # fmt: skip
        status = folder.read_status()
    kept = status.get("kept") or []
    what = f"kept the results of {', '.join(kept)}" if kept else "nothing was measured to its end"
    how = " (killed)" if killed else ""
    return f"stopped evaluation {folder.eval_id} of {run.run_id}{how}: {what} ({folder.results})"
