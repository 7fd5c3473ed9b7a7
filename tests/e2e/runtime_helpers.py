"""Shared helpers for the real-launch tests: a tiny model, the demo data, the CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from engine.run.rundir import FINAL, JsonlTail, RunDir
from tests.conftest import ftui_executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ftui(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ftui_executable(), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def launch(env: dict[str, str], model: Path, data: Path, *extra: str) -> RunDir:
    out = ftui(
        ["launch", "--model", str(model), "--data", str(data), "--device", "cpu", "--json",
         *extra],
        env,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    return RunDir(Path(json.loads(out.stdout)["path"]))


def wait_final(run: RunDir, env: dict[str, str], timeout: float = 600) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = ftui(["status", run.run_id, "--json"], env)
        state = json.loads(out.stdout)["state"]
        if state.get("status") in FINAL:
            return dict(state)
        time.sleep(1.0)
    raise AssertionError(f"{run.run_id} did not finish:\n{run.stdout.read_text()[-3000:]}")


def wait_for(predicate: Any, timeout: float = 300, what: str = "condition") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def losses(run: RunDir) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in JsonlTail(run.metrics).read() if "loss" in r]


def loss_went_down(run: RunDir) -> bool:
    values = [loss for _, loss in losses(run)]
    k = max(1, len(values) // 4)
    return sum(values[-k:]) / k < 0.8 * sum(values[:k]) / k


def pids_of(run: RunDir) -> list[int]:
    state = run.read_state()
    pids = set(state.get("pids", []))
    for key in ("supervisor_pid", "launcher_pid", "trainer_pid"):
        if state.get(key):
            pids.add(int(state[key]))
    return sorted(p for p in pids if _alive(p))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def events(run: RunDir) -> list[dict[str, Any]]:
    return JsonlTail(run.events).read()


def wait_event(run: RunDir, name: str, timeout: float = 300, after: int = 0) -> dict[str, Any]:
    """The first event `name` at index `after` or later of events.jsonl, polled."""
    found: list[dict[str, Any]] = []

    def seen() -> bool:
        found[:] = [e for e in events(run)[after:] if e.get("event") == name]
        return bool(found)

    wait_for(seen, timeout, what=f"event {name} in {run.run_id}")
    return found[0]


def status(run: RunDir | str, env: dict[str, str]) -> dict[str, Any]:
    """`ftui status RUN --json` (must succeed)."""
    ref = run if isinstance(run, str) else run.run_id
    out = ftui(["status", ref, "--json"], env)
    assert out.returncode == 0, out.stdout + out.stderr
    return dict(json.loads(out.stdout))


def checkpoint_steps(run: RunDir) -> list[int]:
    return [int(p.name.split("-")[1]) for p in run.checkpoints_complete()]
