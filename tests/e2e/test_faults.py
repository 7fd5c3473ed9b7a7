"""Faults a demanding user causes, with real processes and real signals: run references that are
not runs, damaged state files, stop --now (once, repeatedly, on a stuck trainer), a killed
supervisor, two resumes at once, a lock held by another command, `ftui runs` in a pipe.

The training runs are the demo's tiny model on CPU, all launched at once by one fixture (their
start-up, mostly imports, overlaps), with few steps and short grace periods; every wait polls
files or processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.demo.tiny import build_tiny_model, write_demo_dataset
from engine.paths import runs_root
from engine.run.processes import pid_alive, supervisor_alive, trainer_processes
from engine.run.rundir import RunDir, append_jsonl, create_run_dir, write_json_atomic
from tests.conftest import ftui_executable
from tests.e2e.runtime_helpers import (
    checkpoint_steps,
    events,
    ftui,
    launch,
    losses,
    status,
    wait_event,
    wait_final,
    wait_for,
)

# -- run references -------------------------------------------------------------------------------


def _snapshot(*roots: Path) -> dict[str, bytes | None]:
    """Every file and folder under `roots`, with the files' bytes."""
    seen: dict[str, bytes | None] = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            for name in dirs:
                seen[os.path.join(folder, name)] = None
            for name in files:
                path = os.path.join(folder, name)
                seen[path] = Path(path).read_bytes()
    return seen


def _made_run(name: str = "tiny", **state: Any) -> RunDir:
    """A run folder as `ftui launch` makes it, in the isolated FTUI_HOME (no processes)."""
    run = create_run_dir(name)
    (run.path / "spec.yaml").write_text(
        "model: tiny-model\nmodel_path: /models/tiny-model\ndata: /data/d.jsonl\n"
        "training:\n  method: lora\n  num_gpus: 1\n"
    )
    write_json_atomic(run.command, {"launcher": "python", "argv": ["true"]})
    full = {"status": "stopped", "run_id": run.run_id, "created_at": time.time(),
            "model": "tiny-model", "method": "lora", "num_gpus": 1, **state}  # fmt: skip
    write_json_atomic(run.state, full)
    return run


def test_a_reference_that_is_not_a_run_is_refused_and_nothing_is_written(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    run = _made_run()
    mine = tmp_path / "my-project"
    mine.mkdir()
    (mine / "state.json").write_text('{"my": "own data", "status": "running"}')
    cwd = tmp_path / "work"
    cwd.mkdir()
    (runs_root() / "linked").symlink_to(mine)
    root_files = {p: Path(p).exists() for p in ("/state.json", "/.state.lock", "/.run.lock")}
    before = _snapshot(tmp_path)
    refs = [str(mine), "", "..", "/", ".", str(runs_root()), str(runs_root().parent),
            str(runs_root() / "linked"), str(run.path / "control"), f"{run.path}/../..",
            "~"]  # fmt: skip
    for ref in refs:
        for command in (["status", ref], ["stop", ref], ["resume", ref], ["logs", ref]):
            out = subprocess.run(
                [*ftui_executable(), *command], env=cli_env, cwd=cwd, capture_output=True,
                text=True, timeout=60,
            )  # fmt: skip
            assert out.returncode == 2, (command, out.stdout, out.stderr)
            assert "Traceback" not in out.stderr, (command, out.stderr)
            assert "not a run" in out.stderr or "empty" in out.stderr, (command, out.stderr)
            assert "fix:" in out.stderr
    assert _snapshot(tmp_path) == before  # the user's state.json is intact, no lock files
    assert {p: Path(p).exists() for p in root_files} == root_files
    # A run ftui made is found by id, by prefix and by its path (relative or absolute).
    for ref in (run.run_id, run.run_id[:8], str(run.path), f"{run.path}/"):
        assert status(ref, cli_env)["run_id"] == run.run_id, ref
    out = subprocess.run([*ftui_executable(), "status", run.run_id, "--json"], env=cli_env,
                         cwd=runs_root(), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert json.loads(out.stdout)["run_id"] == run.run_id


def test_runs_in_a_pipe_prints_whole_run_ids(cli_env: dict[str, str]) -> None:
    run = _made_run("a-rather-long-experiment-name-for-the-seventh-try")
    assert len(run.run_id) > 60
    out = ftui(["runs"], cli_env)  # stdout is a pipe here
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["run", "status", "age", "progress", "loss", "GPUs", "model", "eval"]
    assert lines[1].split()[0] == run.run_id  # whole, not cut at 80 columns
    assert "stopped" in lines[1].split()
    assert lines[1].split()[5] == "1"  # GPUs


def test_a_run_on_the_cpu_says_cpu_not_one_gpu(cli_env: dict[str, str]) -> None:
    run = _made_run("on-the-cpu")
    with run.spec.open("a") as fh:
        fh.write("device: cpu\n")  # what ftui launch writes on a machine without GPUs
    row = ftui(["runs"], cli_env).stdout.splitlines()[1].split()
    assert row[0] == run.run_id and row[5] == "CPU"
    assert "on the CPU" in ftui(["status", run.run_id], cli_env).stdout


# -- a damaged state.json (no processes) ----------------------------------------------------------

DAMAGE = {
    "empty": b"",
    "not JSON": b'{"status": "runn',
    "not UTF-8": b'{"status": "\xff\xfe running"}',
}


def _damaged_dead_run(damage: bytes, *, ended: bool) -> RunDir:
    """A run whose processes are gone and whose state.json is damaged; its events say what
    happened (the trainer's lifecycle as the runtime writes it)."""
    run = _made_run()
    dead = subprocess.Popen(["true"])
    dead.wait()
    t = time.time()
    for record in (
        {"t": t - 60, "event": "created", "launcher": "python"},
        {"t": t - 59, "event": "supervisor_started", "pid": dead.pid, "create_time": t - 59},
        {"t": t - 58, "event": "launched", "pid": dead.pid, "create_time": t - 58},
        {"t": t - 50, "event": "train_begin", "step": 0, "max_steps": 40,
         "trainer_pid": dead.pid, "trainer_pgid": dead.pid, "trainer_create_time": t - 58},
        {"t": t - 40, "event": "checkpoint", "step": 10, "path": str(run.checkpoints / "c")},
    ):  # fmt: skip
        append_jsonl(run.events, record)
    if ended:
        append_jsonl(run.events, {"t": t - 30, "event": "exited", "returncode": 0,
                                  "status": "stopped", "failure": None})  # fmt: skip
    run.state.write_bytes(damage)
    return run


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_state_json_never_breaks_the_list_and_is_rebuilt(
    kind: str, cli_env: dict[str, str]
) -> None:
    healthy = _made_run("healthy")
    ended = _damaged_dead_run(DAMAGE[kind], ended=True)
    died = _damaged_dead_run(DAMAGE[kind], ended=False)
    for args in (["runs"], ["runs", "--json"]):
        out = ftui(args, cli_env)
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    listed = {r["run_id"]: r for r in json.loads(ftui(["runs", "--json"], cli_env).stdout)}
    assert listed[healthy.run_id]["label"] == "stopped"
    assert listed[ended.run_id]["label"] == "stopped (state damaged)"
    assert listed[ended.run_id]["model"] == "tiny-model"  # from spec.yaml
    assert listed[ended.run_id]["method"] == "lora"
    assert listed[ended.run_id]["damaged"].startswith("state.json is")
    # Nobody is left to end the other one: it is recorded as killed, with what was known.
    assert listed[died.run_id]["label"] == "failed (killed, state damaged)"
    state = json.loads(died.state.read_text())
    assert state["status"] == "failed" and state["max_steps"] == 40
    assert died.path.joinpath("state.json.damaged").read_bytes() == DAMAGE[kind]
    shown = status(ended, cli_env)
    assert shown["state"]["last_checkpoint_step"] == 10
    text = ftui(["status", ended.run_id], cli_env)
    assert text.returncode == 0 and "state damaged" in text.stdout, text.stdout + text.stderr


async def test_the_runs_screen_lists_a_run_with_a_non_utf8_state(
    cli_env: dict[str, str],
) -> None:
    from tests.tui.test_runs_screen import open_runs, runs_app

    healthy = _made_run("healthy")
    broken = _damaged_dead_run(DAMAGE["not UTF-8"], ended=True)
    app = runs_app()
    async with app.run_test(size=(160, 40)) as pilot:
        screen = await open_runs(pilot)
        from tui.screens.runs.table import RunsTable

        table = screen.query_one(RunsTable)
        assert set(table.run_ids) == {healthy.run_id, broken.run_id}
        assert table.infos[broken.run_id].label == "stopped (state damaged)"


def test_a_held_run_lock_times_out_with_a_message(cli_env: dict[str, str]) -> None:
    run = _made_run()
    env = {**cli_env, "FTUI_LOCK_SECONDS": "1"}
    with (run.path / ".run.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another command is resuming it
        for command in (["stop", run.run_id], ["resume", run.run_id]):
            started = time.monotonic()
            out = ftui(command, env, timeout=30)
            assert out.returncode == 2, out.stderr
            assert "another ftui command is starting, resuming or stopping" in out.stderr
            assert time.monotonic() - started < 15
        assert status(run, env)["status"] == "stopped"  # reading needs no lock


# -- live runs ------------------------------------------------------------------------------------

TRAIN = ("--batch", "2", "--lr", "5e-3", "--seq-len", "64", "--save-steps", "4")
ONCE_STEPS = 120  # `once` is resumed and completes: long enough that a stop at step 5 lands first
ENDLESS = "100000"  # the other runs are stopped or killed by their tests, never completed: no
# test can find its run already finished, however fast the machine trains
GRACE = "4"  # FTUI_STOP_GRACE_SECONDS for the runs whose trainer is frozen (a healthy trainer
# may need longer than this to exit, under load)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Five runs launched at once: `once`, `thrice` (stop --now once / three times), `frozen`
    (stop --now on a stuck trainer), `orphan` (the supervisor is killed), `orphan_frozen`."""
    root = tmp_path_factory.mktemp("faults")
    model = build_tiny_model(root / "model", pretrain_steps=0)  # faults need no learning
    data = write_demo_dataset(root / "data.jsonl")
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "FTUI_HOME": str(root / "home"), "PYTHONPATH": repo,
           "HF_HUB_OFFLINE": "1"}  # fmt: skip
    short = {**env, "FTUI_STOP_GRACE_SECONDS": GRACE}
    runs = {
        "once": launch(env, model, data, "--max-steps", str(ONCE_STEPS), *TRAIN),
        "thrice": launch(env, model, data, "--max-steps", ENDLESS, *TRAIN),
        "frozen": launch(short, model, data, "--max-steps", ENDLESS, *TRAIN),
        "orphan": launch(env, model, data, "--max-steps", ENDLESS, *TRAIN),
        "orphan_frozen": launch(env, model, data, "--max-steps", ENDLESS, *TRAIN),
    }
    yield {"env": env, "short_grace": short, **runs}
    for run in runs.values():  # nothing outlives the tests
        state = run.read_state()
        with contextlib.suppress(ProcessLookupError):
            for pid in [*trainer_processes(state), state.get("supervisor_pid") or 0]:
                if pid and pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)


def _step_reached(run: RunDir, step: int) -> bool:
    return any(s >= step for s, _ in losses(run))


def _trainer(run: RunDir) -> int:
    begin = wait_event(run, "train_begin")
    return int(begin["trainer_pid"])


def _assert_stopped_resumable(run: RunDir, state: dict[str, Any]) -> None:
    assert state["status"] == "stopped", (state, run.stdout.read_text()[-2000:])
    assert not run.final.exists(), "a stopped run wrote final/"
    on_disk = checkpoint_steps(run)
    assert on_disk, "no checkpoint to resume from"
    assert state["last_checkpoint_step"] == on_disk[-1]
    # Everything exits (a resume needs that); nothing is left behind.
    wait_for(lambda: not trainer_processes(state) and not supervisor_alive(state), timeout=60,
             what="the run's processes to exit")  # fmt: skip


@pytest.mark.slow
def test_stop_now_once_or_three_times_ends_stopped_then_two_resumes_start_one_trainer(
    live: dict[str, Any],
) -> None:
    env, once, thrice = live["env"], live["once"], live["thrice"]
    # each is stopped as soon as it has trained five steps (they start at different times)
    wait_for(lambda: _step_reached(once, 5), what="five steps")
    out = ftui(["stop", once.run_id, "--now"], env)
    assert out.returncode == 0, out.stderr
    wait_for(lambda: _step_reached(thrice, 5), what="five steps")
    quick = [subprocess.Popen([*ftui_executable(), "stop", thrice.run_id, "--now"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]  # fmt: skip
    for proc in quick:
        _, err = proc.communicate(timeout=60)  # never hangs on a lock
        assert proc.returncode in (0, 2) and "Traceback" not in err, err
    for run in (once, thrice):
        state = wait_final(run, env, timeout=120)
        _assert_stopped_resumable(run, state)
        assert state["last_checkpoint_step"] < ONCE_STEPS
        assert not [e for e in events(run) if e["event"] == "killed_after_grace"]

    # Two resumes at the same moment: exactly one starts a trainer.
    before = len(events(once))
    both = [subprocess.Popen([*ftui_executable(), "resume", once.run_id], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]  # fmt: skip
    results = [(p.wait(timeout=60), p.stderr.read() if p.stderr else "") for p in both]
    assert sorted(code for code, _ in results) == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "live processes" in refused or "another ftui command" in refused
    state = wait_final(once, env, timeout=300)
    assert state["status"] == "completed", once.stdout.read_text()[-3000:]
    after = events(once)[before:]
    assert [e["event"] for e in after].count("supervisor_started") == 1
    assert [e["event"] for e in after].count("train_begin") == 1
    steps = [s for s, _ in losses(once)]
    assert steps == sorted(set(steps)) and steps[-1] == ONCE_STEPS  # one history, no duplicates


@pytest.mark.slow
def test_stop_now_kills_a_stuck_trainer_after_the_grace_even_with_a_damaged_state(
    live: dict[str, Any],
) -> None:
    env, run = live["env"], live["frozen"]
    wait_for(lambda: _step_reached(run, 5), what="five steps")
    trainer = _trainer(run)
    os.kill(trainer, signal.SIGSTOP)  # it ignores everything but SIGKILL now
    # Damage the state file in every way while it runs: the list and status stay right.
    for kind, damage in DAMAGE.items():
        run.state.write_bytes(damage)
        listed = {r["run_id"]: r for r in json.loads(ftui(["runs", "--json"], env).stdout)}
        assert listed[run.run_id]["label"] == "running (state damaged)", (kind, listed)
        assert listed[run.run_id]["method"] == "lora"
        shown = ftui(["runs"], env)
        assert shown.returncode == 0 and run.run_id in shown.stdout, shown.stderr
    started = time.monotonic()
    out = ftui(["stop", run.run_id, "--now"], env)
    assert out.returncode == 0, out.stderr
    state = wait_final(run, env, timeout=120)
    assert time.monotonic() - started >= float(GRACE) - 1
    _assert_stopped_resumable(run, state)
    assert not pid_alive(trainer)
    assert [e for e in events(run) if e["event"] == "killed_after_grace"]
    rebuilt = json.loads(run.state.read_text())  # valid again, and says what happened
    assert rebuilt["damaged"] and rebuilt["method"] == "lora"


@pytest.mark.slow
def test_a_trainer_whose_supervisor_is_killed_checkpoints_and_stops(
    live: dict[str, Any],
) -> None:
    env, run = live["env"], live["orphan"]
    wait_for(lambda: _step_reached(run, 5), what="five steps")
    trainer = _trainer(run)
    os.kill(int(run.read_state()["supervisor_pid"]), signal.SIGKILL)
    state = wait_final(run, env, timeout=120)
    _assert_stopped_resumable(run, state)
    assert "supervisor died" in state["note"]
    wait_for(lambda: not pid_alive(trainer), timeout=60, what="the trainer to exit")
    stopped = [e for e in events(run) if e["event"] == "stop_requested"]
    assert stopped and stopped[-1]["reason"] == "supervisor gone"
    assert state["last_checkpoint_step"] == stopped[-1]["step"]  # checkpointed where it stopped


@pytest.mark.slow
def test_a_live_trainer_without_supervisor_is_running_refuses_resume_and_stop_kills_it(
    live: dict[str, Any],
) -> None:
    env, run = live["env"], live["orphan_frozen"]
    wait_for(lambda: _step_reached(run, 5), what="five steps")
    trainer = _trainer(run)
    os.kill(trainer, signal.SIGSTOP)  # alive, but it cannot notice anything
    os.kill(int(run.read_state()["supervisor_pid"]), signal.SIGKILL)
    time.sleep(0.5)
    shown = status(run, env)
    assert shown["label"] == "running", shown["state"]
    out = ftui(["resume", run.run_id], env)
    assert out.returncode == 2 and "running (live processes" in out.stderr, out.stderr
    assert pid_alive(trainer)
    out = ftui(["stop", run.run_id, "--now"], live["short_grace"])  # the reaper's grace
    assert out.returncode == 0, out.stderr
    state = wait_final(run, env, timeout=120)
    _assert_stopped_resumable(run, state)
    assert not pid_alive(trainer)
