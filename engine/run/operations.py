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
from engine.paths import child_env
from engine.run.launch import build_launch
from engine.run.processes import (
    create_time,
    signal_trainers,
    supervisor_alive,
    trainer_processes,
)
from engine.run.rundir import (
    FINAL,
    RunBusy,
    RunDir,
    create_run_dir,
    iter_run_paths,
    read_json,
    read_spec,
    write_json_atomic,
)
from engine.run.spec import RunSpec

# The process records of an earlier attempt, cleared when a run starts again.
_PROCESS_KEYS = ("supervisor_pid", "supervisor_create_time", "launcher_pid", "pgid",
                 "launcher_create_time", "pids", "pid_times", "trainer_pid", "trainer_pgid",
                 "trainer_create_time")  # fmt: skip


def start_supervisor(run: RunDir, *extra_args: str) -> int:
    """Start the detached supervisor of `run`; returns its pid at once. The caller holds the
    run's operation lock."""
    command_env = child_env()  # the supervisor and the trainer import this same ftui
    log = (run.path / "supervisor.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.run.supervisor", "--run-dir", str(run.path), *extra_args],
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
    if not extra_args:
        run.update_state(supervisor_pid=proc.pid, supervisor_create_time=create_time(proc.pid))
    return proc.pid


def launch(spec: RunSpec, *, plan_summary: dict[str, Any] | None = None) -> RunDir:
    """Create the run directory, write spec, plan and command, start the supervisor."""
    spec.validate()
    name = spec.name or Path(spec.model).name
    run = create_run_dir(name)
    with run.operation_lock():
        _create_and_start(run, spec, plan_summary)
    return run


def _create_and_start(run: RunDir, spec: RunSpec, plan_summary: dict[str, Any] | None) -> None:
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
    damaged: str | None = None  # what was wrong with state.json (rebuilt from the events)
    eval: dict[str, Any] | None = None  # the latest finished `ftui eval` (eval/summary.json)
    stop_reason: str | None = None  # a stopped run: requested, budget, signal N, ...
    device: str = "auto"  # spec.yaml's device: "cpu" for a run on the CPU

    @property
    def gpus_label(self) -> str:
        """The runs list's GPUs cell: the count, or CPU for a run that used none."""
        return "CPU" if self.device == "cpu" else str(self.num_gpus)

    @property
    def label(self) -> str:
        budget = "budget" if self.status == "stopped" and self.stop_reason == "budget" else None
        notes = [n for n in (self.failure, budget, "state damaged" if self.damaged else None) if n]
        return f"{self.status} ({', '.join(notes)})" if notes else self.status

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


def reconcile(run: RunDir, *, locked: bool = False) -> dict[str, Any]:
    """state.json, corrected when nobody is left to write the run's end (its supervisor and
    every training process died: SIGKILL, a reboot). A live trainer keeps a run `running` even
    without its supervisor (the trainer then checkpoints and stops by itself). `locked`: the
    caller holds the run's operation lock; otherwise a start or resume under way (which holds
    it) is left alone."""
    state = run.read_state()
    if state.get("status", "starting") in FINAL or _alive(state):
        return state
    if locked:
        return _record_killed(run)
    try:
        with run.try_operation_lock():
            return _record_killed(run)
    except RunBusy:
        return state  # a command is starting or stopping it right now


def _alive(state: dict[str, Any]) -> bool:
    return supervisor_alive(state) or bool(trainer_processes(state))


def _record_killed(run: RunDir) -> dict[str, Any]:
    def decide(state: dict[str, Any]) -> dict[str, Any] | None:
        if state.get("status", "starting") in FINAL or _alive(state):
            return None
        return {
            "status": "failed",
            "failure": "killed",
            "note": "the run's processes died",
            **_checkpoint_on_disk(run),
        }

    return run.modify_state(decide)


def _checkpoint_on_disk(run: RunDir) -> dict[str, Any]:
    """The last complete checkpoint as found on disk (what a resume would start from)."""
    last = run.last_checkpoint()
    if last is None:
        return {"last_checkpoint": None, "last_checkpoint_step": None}
    return {"last_checkpoint": str(last), "last_checkpoint_step": int(last.name.split("-")[1])}


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
        damaged=state.get("damaged"),
        eval=read_json(run.path / "eval" / "summary.json") or None,
        stop_reason=state.get("stop_reason") if state.get("status") == "stopped" else None,
        device=str(read_spec(run).get("device") or "auto"),
    )


def list_runs(root: Path | None = None) -> list[RunInfo]:
    infos = []
    for path in iter_run_paths(root):
        try:
            infos.append(run_info(RunDir(path)))
        except RunBusy:
            continue  # its state stayed locked: shown at the next refresh
    return sorted(infos, key=lambda i: i.created_at, reverse=True)


def stop(run: RunDir, *, now: bool = False) -> str:
    """Ask the run to checkpoint and stop (`now`: SIGTERM, then SIGKILL after a grace)."""
    with run.operation_lock():
        state = reconcile(run, locked=True)
        live = trainer_processes(state)
        if state.get("status") in FINAL and not live:
            raise FtuiError(f"run {run.run_id} is already {state['status']}", "nothing to stop")
        if not now:
            run.request("stop")
            run.event("stop_requested_by_user")
            run.modify_state(_stopping)
            return "requested: the run saves a checkpoint at the end of this step and exits"
        run.event("stop_now_requested_by_user")
        run.modify_state(_stopping)
        if supervisor_alive(state):
            os.kill(int(state["supervisor_pid"]), signal.SIGTERM)
            return "sent SIGTERM: the run checkpoints if it can, then every process is killed"
        # No supervisor: signal the trainers ourselves; a detached helper escalates to SIGKILL
        # after the grace period and records the end.
        signal_trainers(state, signal.SIGTERM)
        start_supervisor(run, "--reap")
        return (
            "sent SIGTERM to the run's trainer (its supervisor is gone); it is killed if it "
            "has not stopped after the grace period"
        )


def _stopping(state: dict[str, Any]) -> dict[str, Any] | None:
    return None if state.get("status") in FINAL else {"status": "stopping"}


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

    state = reconcile(run)
    status = state.get("status", "starting")
    if status not in FINAL or trainer_processes(state):
        raise FtuiError(
            f"run {run.run_id} is {status}: it cannot be deleted while it runs",
            "stop it first, then delete it",
        )
    shutil.rmtree(run.path)


def resume(run: RunDir, *, budget: dict[str, Any] | None = None) -> str:
    """Continue a stopped or failed run from its last complete checkpoint, in place. At most
    one resume (or start, or stop) runs at a time, and never while a trainer of it lives.
    `budget`: new caps (`max_cost`, `max_hours`) written into its spec first; a run stopped by
    a cap it has reached does not resume without a larger one."""
    with run.operation_lock():
        state = reconcile(run, locked=True)
        live = trainer_processes(state)
        if live or supervisor_alive(state):
            supervisor = [state["supervisor_pid"]] if supervisor_alive(state) else []
            pids = ", ".join(str(p) for p in [*live, *supervisor])
            raise FtuiError(
                f"run {run.run_id} is {state.get('status')} (live processes: {pids})",
                "only a stopped or failed run whose processes have exited resumes: wait for "
                f"them, or stop it (`ftui stop {run.run_id}`)",
            )
        if state.get("status") not in ("failed", "stopped"):
            raise FtuiError(
                f"run {run.run_id} is {state.get('status')}",
                "only a stopped or failed run resumes",
            )
        checkpoint = run.last_checkpoint()
        if checkpoint is None:
            raise FtuiError(
                f"run {run.run_id} has no complete checkpoint", "launch it again from the start"
            )
        _new_caps(run, state, budget or {})
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
            **dict.fromkeys(_PROCESS_KEYS),
            **dict.fromkeys(("stop_reason", "note", "budget_projection")),
        )
        run.event("resume", checkpoint=str(checkpoint))
        start_supervisor(run)
    return str(checkpoint)


def _new_caps(run: RunDir, state: dict[str, Any], caps: dict[str, Any]) -> None:
    """Write the new caps into spec.yaml; refuse a cap the run has already reached."""
    from dataclasses import replace

    from engine.run.cost import run_cost

    spec = RunSpec.from_yaml(run.spec.read_text(encoding="utf-8"))
    if caps:
        spec = replace(spec, budget=replace(spec.budget, **caps)).validate()
    cost = run_cost(run, state, now=time.time())
    b = spec.budget
    spent = cost.spent_usd
    if b.max_cost is not None and spent is not None and spent >= b.max_cost:
        raise FtuiError(
            f"run {run.run_id} has cost ${spent:.4g}, its --max-cost is ${b.max_cost:g}",
            f"resume with a larger cap: `ftui resume {run.run_id} --max-cost "
            f"{max(2 * b.max_cost, 2 * spent):.4g}`",
        )
    hours = cost.elapsed_s / 3600
    if b.max_hours is not None and hours >= b.max_hours:
        raise FtuiError(
            f"run {run.run_id} has run {hours:.3g} h, its --max-hours is {b.max_hours:g}",
            f"resume with a larger cap: `ftui resume {run.run_id} --max-hours "
            f"{max(2 * b.max_hours, 2 * hours):.3g}`",
        )
    if caps:
        run.spec.write_text(spec.to_yaml(), encoding="utf-8")
        run.event("budget_changed", **caps)


def wait(run: RunDir, timeout: float, poll: float = 0.5) -> dict[str, Any]:
    """Block until the run reaches a final state (tests, `ftui demo --headless`)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = reconcile(run)
        if state.get("status") in FINAL:
            return state
        time.sleep(poll)
    raise TimeoutError(f"run {run.run_id} still {run.read_state().get('status')}")
