"""Runs as a user sees them: launch (detached), list, status, stop, save, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import FtuiError
from engine.run.launch import build_launch
from engine.run.rundir import FINAL, RunDir, create_run_dir, iter_run_paths, write_json_atomic
from engine.run.spec import RunSpec


def _pid_alive(pid: int | None, create_time: float | None = None) -> bool:
    if not pid:
        return False
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(proc.create_time() - create_time) < 1.0
    except psutil.Error:
        return False


def start_supervisor(run: RunDir) -> int:
    """Start the detached supervisor of `run`; returns its pid at once."""
    import psutil

    command_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # The supervisor and the trainer must import this same ftui, installed or not.
    root = str(Path(__file__).resolve().parent.parent)
    current = command_env.get("PYTHONPATH")
    command_env["PYTHONPATH"] = root + (os.pathsep + current if current else "")
    log = (run.path / "supervisor.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.run.supervisor", "--run-dir", str(run.path)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=str(run.path),
        env=command_env,
        start_new_session=True,  # its own session: no terminal, no SIGHUP from SSH
        close_fds=True,
    )
    log.close()
    # Reap it if this process outlives it (the TUI), so it never lingers as a zombie.
    threading.Thread(target=proc.wait, daemon=True).start()
    create_time = psutil.Process(proc.pid).create_time()
    run.update_state(supervisor_pid=proc.pid, supervisor_create_time=create_time)
    return proc.pid


def launch(spec: RunSpec, *, plan_summary: dict[str, Any] | None = None) -> RunDir:
    """Create the run directory, write spec, plan and command, start the supervisor."""
    spec.validate()
    name = spec.name or Path(spec.model).name
    run = create_run_dir(name)
    run.spec.write_text(spec.to_yaml(), encoding="utf-8")
    write_json_atomic(run.plan, plan_summary or {})
    command = build_launch(spec, run.path)
    for filename, content in command.files.items():
        (run.path / filename).write_text(content, encoding="utf-8")
    write_json_atomic(run.command, command.to_dict())
    run.update_state(
        status="starting",
        run_id=run.run_id,
        created_at=time.time(),
        model=Path(spec.model).name if Path(spec.model).is_dir() else spec.model,
        method=spec.training.method,
        num_gpus=spec.training.num_gpus,
        nodes=spec.distributed.nodes,
        launcher=command.launcher,
        plan_summary=plan_summary or {},
    )
    run.event("created", launcher=command.launcher)
    start_supervisor(run)
    return run


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    path: str
    status: str
    failure: str | None
    model: str
    method: str
    num_gpus: int
    created_at: float
    step: int | None
    max_steps: int | None
    loss: float | None

    @property
    def label(self) -> str:
        return f"{self.status} ({self.failure})" if self.failure else self.status

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "label": self.label}


def _last_metric(run: RunDir) -> dict[str, Any]:
    """The last complete metrics line, read from the end of the file (cheap on big files)."""
    import json

    try:
        with run.metrics.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 8192))
            lines = fh.read().split(b"\n")
    except OSError:
        return {}
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(record, dict) and "loss" in record:
            return record
    return {}


def reconcile(run: RunDir) -> dict[str, Any]:
    """state.json, corrected when its supervisor died without writing the end (SIGKILL)."""
    state = run.read_state()
    status = state.get("status", "starting")
    if status in FINAL:
        return state
    if _pid_alive(state.get("supervisor_pid"), state.get("supervisor_create_time")):
        return state
    # Nobody is left to finish the state: kill stragglers and record how it ended.
    from engine.run.supervisor import _kill

    _kill([p for p in state.get("pids", []) if _pid_alive(p)], signal.SIGKILL)
    return run.update_state(status="failed", failure="killed", note="the run's processes died")


def run_info(run: RunDir) -> RunInfo:
    state = reconcile(run)
    last = _last_metric(run)
    return RunInfo(
        run_id=run.run_id,
        path=str(run.path),
        status=state.get("status", "starting"),
        failure=state.get("failure") if state.get("status") == "failed" else None,
        model=state.get("model", "?"),
        method=state.get("method", "?"),
        num_gpus=int(state.get("num_gpus", 1) or 1),
        created_at=float(state.get("created_at", 0) or 0),
        step=last.get("step"),
        max_steps=last.get("max_steps") or state.get("max_steps"),
        loss=last.get("loss"),
    )


def list_runs(root: Path | None = None) -> list[RunInfo]:
    infos = [run_info(RunDir(p)) for p in iter_run_paths(root)]
    return sorted(infos, key=lambda i: i.created_at, reverse=True)


def stop(run: RunDir, *, now: bool = False) -> str:
    state = reconcile(run)
    if state.get("status") in FINAL:
        raise FtuiError(f"run {run.run_id} is already {state['status']}", "nothing to stop")
    if not now:
        run.request("stop")
        run.event("stop_requested_by_user")
        run.update_state(status="stopping")
        return "requested: the run saves a checkpoint at the end of this step and exits"
    pid = state.get("supervisor_pid")
    if pid and _pid_alive(int(pid), state.get("supervisor_create_time")):
        os.kill(int(pid), signal.SIGTERM)
        return "sent SIGTERM: the run checkpoints if it can, then every process is killed"
    from engine.run.supervisor import _kill

    _kill([int(p) for p in state.get("pids", [])], signal.SIGKILL)
    run.update_state(status="stopped", note="killed with --now")
    return "killed the run's processes"


def save_now(run: RunDir) -> None:
    state = reconcile(run)
    if state.get("status") not in ("running", "starting"):
        raise FtuiError(
            f"run {run.run_id} is {state.get('status')}", "only a running run can save now"
        )
    run.request("save-now")
    run.event("save_requested_by_user")


def run_size_bytes(path: Path) -> int:
    """Bytes on disk of a run directory (what deleting it frees)."""
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                continue
    return total


def delete_run(run: RunDir) -> None:
    """Remove a finished run's folder; refuses a run that is still going."""
    import shutil

    status = reconcile(run).get("status", "starting")
    if status not in FINAL:
        raise FtuiError(
            f"run {run.run_id} is {status}: it cannot be deleted while it runs",
            "stop it first, then delete it",
        )
    shutil.rmtree(run.path)


def resume(run: RunDir) -> str:
    """Continue a stopped or failed run from its last complete checkpoint, in place."""
    state = reconcile(run)
    if state.get("status") not in ("failed", "stopped"):
        raise FtuiError(
            f"run {run.run_id} is {state.get('status')}", "only a stopped or failed run resumes"
        )
    checkpoint = run.last_checkpoint()
    if checkpoint is None:
        raise FtuiError(
            f"run {run.run_id} has no complete checkpoint", "launch it again from the start"
        )
    (run.control / "stop").unlink(missing_ok=True)
    (run.control / "save-now").unlink(missing_ok=True)
    import json

    command = json.loads(run.command.read_text(encoding="utf-8"))
    command["extra_env"] = {"FTUI_RESUME_FROM": str(checkpoint)}
    write_json_atomic(run.command, command)
    run.update_state(
        status="starting",
        failure=None,
        resumed_from=str(checkpoint),
        resumed_at=time.time(),
        exit_code=None,
    )
    run.event("resume", checkpoint=str(checkpoint))
    start_supervisor(run)
    return str(checkpoint)


def wait(run: RunDir, timeout: float, poll: float = 0.5) -> dict[str, Any]:
    """Block until the run reaches a final state (tests, `ftui demo --headless`)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = reconcile(run)
        if state.get("status") in FINAL:
            return state
        time.sleep(poll)
    raise TimeoutError(f"run {run.run_id} still {run.read_state().get('status')}")
