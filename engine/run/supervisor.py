"""The run supervisor: `python -m engine.run.supervisor --run-dir D`, one per node, detached.

`ftui launch` starts it in a new session (no controlling terminal: an SSH hangup never reaches
it) and returns at once. It starts the launcher from `command.json` in its own process group
with all output to `stdout.log`, records every pid, samples the GPUs into `gpu.jsonl`, forwards
SIGTERM (the single-process and deepspeed launchers do not), escalates to SIGKILL of every
recorded pid (torchrun workers sit in sessions of their own), and classifies how the run ended.
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

from engine.run.rundir import RunDir, append_jsonl

GRACE_SECONDS = 45.0  # torchrun's own shutdown grace (30 s) + a checkpoint save
SAMPLE_SECONDS = 2.0
PID_REFRESH_SECONDS = 3.0
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


class Supervisor:
    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.proc: subprocess.Popen[bytes] | None = None
        self.known_pids: set[int] = set()
        self.stop_now = False
        self._done = threading.Event()

    def _on_term(self, signum: int, frame: Any) -> None:
        """`ftui stop --now` (or a system shutdown): forward, wait, then kill everything."""
        self.stop_now = True
        self.run.event("stop_now", signal=signum)
        self.run.update_state(status="stopping")
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        threading.Thread(target=self._escalate, daemon=True).start()

    def _escalate(self) -> None:
        if self._done.wait(GRACE_SECONDS):
            return
        proc = self.proc
        pids = sorted(self.known_pids | set(_descendants(proc.pid) if proc else []))
        if proc:
            pids.append(proc.pid)
        _kill(pids, signal.SIGKILL)

    def _watch_pids(self) -> None:
        while not self._done.wait(PID_REFRESH_SECONDS):
            if self.proc is None:
                continue
            current = set(_descendants(self.proc.pid))
            if current - self.known_pids:
                self.known_pids |= current
                self.run.update_state(pids=sorted(self.known_pids | {self.proc.pid}))

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
        command = json.loads(run.command.read_text(encoding="utf-8"))
        env = {**os.environ, **command.get("env", {}), **command.get("extra_env", {})}
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
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
        run.update_state(launcher_pid=self.proc.pid, pgid=self.proc.pid)
        run.event("launched", pid=self.proc.pid, argv=command["argv"])
        threading.Thread(target=self._watch_pids, daemon=True).start()
        threading.Thread(target=self._sample_gpus, daemon=True).start()
        returncode = self.proc.wait()
        self._done.set()
        # Orphaned workers (a launcher killed under them) must not outlive the run.
        _kill(sorted(p for p in self.known_pids if p != self.proc.pid), signal.SIGKILL)
        outcome = classify(run, returncode, stop_now=self.stop_now)
        if self._shrink_and_retry(outcome):
            return self.run_to_end()
        run.update_state(exit_code=returncode, finished_at=time.time(), **outcome)
        run.event("exited", returncode=returncode, status=outcome["status"])
        return 0

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
        self.known_pids = set()
        self.stop_now = False
        self._done = threading.Event()
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.run.supervisor")
    parser.add_argument("--run-dir", required=True)
    args = parser.parse_args(argv)
    run = RunDir(Path(args.run_dir))
    return Supervisor(run).run_to_end()


if __name__ == "__main__":
    sys.exit(main())
