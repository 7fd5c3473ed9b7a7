"""The run supervisor: `python -m engine.run.supervisor --run-dir D`, one per node, detached.

`ftui launch` starts it in a new session (no controlling terminal: an SSH hangup never reaches
it) and returns at once. It starts the launcher from `command.json` in its own process group
with all output to `stdout.log`, records every pid (with its create time), samples the GPUs into
`gpu.jsonl`, forwards SIGTERM (the single-process and deepspeed launchers do not), escalates to
SIGKILL of every recorded pid after the grace period (torchrun workers sit in sessions of their
own), and classifies how the run ended. `--reap` only ends the trainer of a run whose
supervisor died (`ftui stop --now` starts it). With `--notify URL` in the spec it POSTs the
end of the run, and a stall (no metrics line for `FTUI_STALL_SECONDS`, default 600), to the
webhook (engine/run/notify.py): after the state is final, with a short timeout, never failing
the run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from engine.run.processes import create_time, group_alive, kill_trainers, trainer_processes
from engine.run.rundir import FINAL, RunDir, append_jsonl

GRACE_SECONDS = 45.0  # torchrun's own shutdown grace (30 s) + a checkpoint save
POLL_SECONDS = 0.1  # how often the main loop looks at the launcher and the stop flag
SAMPLE_SECONDS = 2.0
PID_REFRESH_SECONDS = 3.0
STALL_SECONDS = 600.0  # no new metrics line for this long: a stalled run (--notify)
_OOM_MARKERS = ("OutOfMemoryError", "CUDA out of memory", "out of memory")


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _kill(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def log_tail(run: RunDir, max_bytes: int = 16_384) -> str:
    try:
        with run.stdout.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def classify(run: RunDir, returncode: int, *, stop_now: bool) -> dict[str, Any]:
    """The final state of a run from its exit code, its own state notes and its log."""
    state = run.read_state()
    tail = log_tail(run)
    last_lines = [line for line in tail.splitlines() if line.strip()][-15:]
    if returncode == 0:
        if state.get("status") in ("completed", "stopped"):
            return {"status": state["status"]}
        stopped = (run.control / "stop").exists() or state.get("status") == "stopping"
        return {"status": "stopped" if stopped else "completed"}
    if stop_now:
        return {"status": "stopped", "failure": None, "note": "stopped with --now"}
    if state.get("status") == "completed" and run.final.is_dir():
        # the trainer saved the model and recorded the end; the launcher failed after that
        # (torch.distributed's teardown can abort a rank: "terminate called without an active
        # exception"): nothing of the run is lost
        return {
            "status": "completed",
            "note": f"training finished and the model was saved; the launcher then exited "
            f"with code {returncode} (see the log)",
        }
    if state.get("failure") == "nan" or returncode == 4:
        return {"status": "failed", "failure": "nan", "log_tail": last_lines}
    if state.get("failure") == "oom" or returncode == 3 or any(m in tail for m in _OOM_MARKERS):
        plan = state.get("plan_summary") or {}
        note = "ran out of GPU memory"
        if plan:
            note += (
                f" (launched with a plan of {plan.get('device_gib', '?')} GiB per GPU on "
                f"{plan.get('gpu', '?')}: lower --batch, enable --grad-ckpt, or use QLoRA)"
            )
        return {"status": "failed", "failure": "oom", "note": note, "log_tail": last_lines}
    if returncode < 0 or returncode in (128 + 9, 137):
        return {
            "status": "failed",
            "failure": "killed",
            "signal": -returncode,
            "log_tail": last_lines,
        }
    if state.get("status") == "starting":
        return {"status": "failed", "failure": "launcher", "log_tail": last_lines}
    return {"status": "failed", "failure": "error", "log_tail": last_lines}


def _grace_seconds() -> float:
    return float(os.environ.get("FTUI_STOP_GRACE_SECONDS", GRACE_SECONDS))


class Supervisor:
    """Its signal handler only sets `stop_signal`; the main loop, which polls the launcher,
    forwards the stop, escalates after the grace period and writes every state change."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.proc: subprocess.Popen[bytes] | None = None
        self.known_pids: dict[int, float | None] = {}  # pid -> create time
        self.stop_signal = 0
        self.stop_now = False
        self.grace = _grace_seconds()
        self._done = threading.Event()
        self._stall_notified_at: float | None = None  # metrics mtime of the last stall told
        from engine.run.rundir import read_spec

        self.notify_url = (read_spec(run).get("budget") or {}).get("notify")

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop_signal = signum  # nothing else: no lock, no I/O (see the main loop)

    def _all_pids(self) -> list[int]:
        proc = self.proc
        pids = set(self.known_pids) | set(_descendants(proc.pid) if proc else [])
        if proc:
            pids.add(proc.pid)
        return sorted(pids)

    def _forward_stop(self) -> None:
        """`ftui stop --now` (or a system shutdown): SIGTERM to every training process (the
        trainer checkpoints at the end of its step and exits); SIGKILL after the grace."""
        self.stop_now = True
        self.run.event("stop_now", signal=self.stop_signal, grace_s=self.grace)
        self.run.modify_state(
            lambda s: None if s.get("status") in FINAL else {"status": "stopping"}
        )
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
        _kill(self._all_pids(), signal.SIGTERM)  # workers in sessions of their own

    def _kill_everything(self) -> None:
        self.run.event("killed_after_grace", grace_s=self.grace)
        proc = self.proc
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        _kill(self._all_pids(), signal.SIGKILL)

    def _refresh_pids(self) -> None:
        if self.proc is None:
            return
        new = [p for p in _descendants(self.proc.pid) if p not in self.known_pids]
        if not new:
            return
        for pid in new:
            self.known_pids[pid] = create_time(pid)
        self.run.update_state(
            pids=sorted(self.known_pids),
            pid_times={str(p): t for p, t in self.known_pids.items() if t is not None},
        )

    def _wait(self, proc: subprocess.Popen[bytes]) -> int:
        deadline: float | None = None
        next_refresh = 0.0
        while True:
            returncode = proc.poll()
            if returncode is not None:
                return returncode
            now = time.monotonic()
            if self.stop_signal and deadline is None:
                deadline = now + self.grace
                self._forward_stop()
            elif deadline is not None and now >= deadline:
                deadline = float("inf")  # once
                self._kill_everything()
            if now >= next_refresh:
                next_refresh = now + PID_REFRESH_SECONDS
                self._refresh_pids()
                self._check_stall()
            time.sleep(POLL_SECONDS)

    def _check_stall(self) -> None:
        """A running run without a new metrics line for STALL_SECONDS: tell the webhook, once
        per silence, from a thread (the main loop never waits on the network)."""
        if not self.notify_url:
            return
        state = self.run.read_state()
        if state.get("status") != "running":
            return
        try:
            last = self.run.metrics.stat().st_mtime
        except OSError:
            last = float(state.get("train_started_at") or time.time())
        limit = float(os.environ.get("FTUI_STALL_SECONDS", STALL_SECONDS))
        if time.time() - last < limit or self._stall_notified_at == last:
            return
        self._stall_notified_at = last
        from engine.run.notify import notify_run

        threading.Thread(target=notify_run, args=(self.run, "stalled", state), daemon=True).start()

    def _notify_end(self) -> None:
        """The run is final: tell its webhook (a short timeout; errors become an event)."""
        from engine.run.notify import notify_run

        with contextlib.suppress(Exception):
            notify_run(self.run, "ended", self.run.read_state())

    def _sample_gpus(self) -> None:
        from engine.machine.hardware import NvmlBackend, read_host_info

        backend = NvmlBackend()
        host = read_host_info(self.run.path)
        while not self._done.wait(SAMPLE_SECONDS):
            snap = backend.snapshot(host=host)
            if not snap.has_gpu:
                return  # no GPU: nothing to sample, ever
            append_jsonl(
                self.run.gpu,
                {
                    "t": time.time(),
                    "gpus": [
                        {
                            "index": g.index,
                            "used": g.memory_used_bytes,
                            "total": g.memory_total_bytes,
                            "util": g.utilization_pct,
                            "temp": g.temperature_c,
                            "power": g.power_draw_w,
                        }
                        for g in snap.gpus
                    ],
                },
            )

    def run_to_end(self) -> int:
        run = self.run
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        me = os.getpid()
        run.event("supervisor_started", pid=me, create_time=create_time(me))
        return self._attempt()

    def _attempt(self) -> int:
        run = self.run
        command = json.loads(run.command.read_text(encoding="utf-8"))
        me = os.getpid()
        env = {
            **os.environ,
            **command.get("env", {}),
            **command.get("extra_env", {}),
            # The trainer stops (with a checkpoint) when this process is gone.
            "FTUI_SUPERVISOR_PID": str(me),
            "FTUI_SUPERVISOR_CREATE_TIME": repr(create_time(me)),
        }
        if self.stop_signal:  # stopped before the launcher started
            self._finish(0, {"status": "stopped", "failure": None, "note": "stopped with --now"})
            self._notify_end()
            return 0
        with run.stdout.open("ab") as out:
            try:
                self.proc = subprocess.Popen(
                    command["argv"],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=str(run.path),
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                run.update_state(status="failed", failure="launcher", error=str(exc))
                run.event("launcher_failed", message=str(exc))
                return 1
        proc = self.proc
        started = create_time(proc.pid)
        self.known_pids = {proc.pid: started}
        run.update_state(
            launcher_pid=proc.pid,
            pgid=proc.pid,  # its own group: the single-process launcher is the trainer itself
            launcher_create_time=started,
            pids=[proc.pid],
            pid_times={str(proc.pid): started} if started is not None else {},
        )
        run.event("launched", pid=proc.pid, create_time=started, argv=command["argv"])
        threading.Thread(target=self._sample_gpus, daemon=True).start()
        returncode = self._wait(proc)
        self._done.set()
        # Leftovers (a launcher killed under its workers, dataloader workers) must not outlive
        # the run.
        if group_alive(proc.pid, started):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        _kill(sorted(p for p in self.known_pids if p != proc.pid), signal.SIGKILL)
        outcome = classify(run, returncode, stop_now=self.stop_now)
        if self._shrink_and_retry(outcome):
            return self._attempt()
        self._finish(returncode, outcome)
        self._notify_end()
        return 0

    def _finish(self, returncode: int, outcome: dict[str, Any]) -> None:
        """The run's end, with the last checkpoint as found on disk (what a resume uses)."""
        last = self.run.last_checkpoint()
        checkpoint = {
            "last_checkpoint": str(last) if last else None,
            "last_checkpoint_step": int(last.name.split("-")[1]) if last else None,
        }
        self.run.update_state(
            exit_code=returncode, finished_at=time.time(), **outcome, **checkpoint
        )
        self.run.event(
            "exited",
            returncode=returncode,
            status=outcome["status"],
            failure=outcome.get("failure"),
        )

    def _shrink_and_retry(self, outcome: dict[str, Any]) -> bool:
        """An OOM before the first checkpoint: halve the micro-batch and start again."""
        from engine.run.probe import MAX_SHRINKS, shrunk_spec
        from engine.run.spec import RunSpec

        run = self.run
        if outcome.get("failure") != "oom" or run.last_checkpoint() is not None:
            return False
        spec = RunSpec.from_yaml(run.spec.read_text(encoding="utf-8"))
        shrinks = int(run.read_state().get("probe_shrinks", 0))
        smaller = shrunk_spec(spec)
        if not spec.probe or smaller is None or shrinks >= MAX_SHRINKS:
            return False
        run.spec.write_text(smaller.to_yaml(), encoding="utf-8")
        t = smaller.training
        run.event("probe_shrink", batch=t.batch, grad_accum=t.grad_accum)
        run.update_state(
            status="starting",
            failure=None,
            probe_shrinks=shrinks + 1,
            note=f"out of memory at micro-batch {spec.training.batch}: retrying with {t.batch} "
            f"x {t.grad_accum} accumulation (same effective batch)",
        )
        self.known_pids = {}
        self._done = threading.Event()
        return True


def reap(run: RunDir, grace: float) -> int:
    """`ftui stop --now` on a run whose supervisor is gone (the trainer got SIGTERM from the
    command): SIGKILL what still runs after the grace period, then record the stop."""
    state = run.read_state()
    deadline = time.monotonic() + grace
    while trainer_processes(state) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    if trainer_processes(state):
        run.event("killed_after_grace", grace_s=grace)
        kill_trainers(state)
        while trainer_processes(state) and time.monotonic() < deadline + 10:
            time.sleep(POLL_SECONDS)
    last = run.last_checkpoint()

    def decide(current: dict[str, Any]) -> dict[str, Any] | None:
        if current.get("status") in FINAL:
            return None  # the trainer recorded its own stop
        return {
            "status": "stopped",
            "failure": None,
            "note": "stopped with --now (its supervisor was gone)",
            "finished_at": time.time(),
            "last_checkpoint": str(last) if last else None,
            "last_checkpoint_step": int(last.name.split("-")[1]) if last else None,
        }

    run.modify_state(decide)
    run.event("exited", returncode=None, status="stopped", failure=None)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.run.supervisor")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--reap", action="store_true", help="only end an orphaned trainer")
    args = parser.parse_args(argv)
    run = RunDir(Path(args.run_dir))
    if args.reap:
        return reap(run, _grace_seconds())
    return Supervisor(run).run_to_end()


if __name__ == "__main__":
    sys.exit(main())
