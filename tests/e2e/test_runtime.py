"""Real detached launches of a tiny model on CPU: every launcher path, stop, kill, resume.

Nothing is mocked: `ftui launch` starts the supervisor, which starts python / torchrun (1 and 2
processes, DeepSpeed ZeRO-2) running the HF Trainer with PEFT / bitsandbytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from engine.demo.tiny import build_tiny_model, write_demo_dataset
from tests.conftest import ftui_executable
from tests.e2e.runtime_helpers import (
    free_port,
    ftui,
    launch,
    loss_went_down,
    losses,
    pids_of,
    wait_final,
    wait_for,
)

pytestmark = pytest.mark.slow
FILES = ("spec.yaml", "plan.json", "command.json", "state.json", "metrics.jsonl", "events.jsonl",
         "stdout.log")  # fmt: skip
TRAIN = ("--batch", "8", "--lr", "5e-3", "--seq-len", "128")


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return build_tiny_model(root / "model"), write_demo_dataset(root / "data.jsonl")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("ftui-home")
    repo = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "FTUI_HOME": str(home), "PYTHONPATH": repo, "HF_HUB_OFFLINE": "1"}


def test_every_launcher_path_trains_and_the_loss_falls(
    assets: tuple[Path, Path], env: dict[str, str]
) -> None:
    model, data = assets
    runs = {
        "lora": launch(env, model, data, "--method", "lora", "--max-steps", "40", *TRAIN),
        "qlora": launch(env, model, data, "--method", "qlora", "--max-steps", "40", *TRAIN),
        "full": launch(env, model, data, "--method", "full", "--max-steps", "40", *TRAIN),
        "zero2": launch(env, model, data, "--method", "full", "--sharding", "zero2",
                        "--max-steps", "40", *TRAIN),
        "ddp2": launch(env, model, data, "--method", "lora", "--num-gpus", "2",
                       "--max-steps", "40", *TRAIN),
    }  # fmt: skip
    for name, run in runs.items():
        state = wait_final(run, env)
        assert state["status"] == "completed", (name, state, run.stdout.read_text()[-3000:])
        for filename in FILES:
            assert (run.path / filename).exists(), (name, filename)
        assert (run.final / "ftui.json").exists(), name
        steps = [s for s, _ in losses(run)]
        assert steps[-1] == 40, (name, steps[-5:])
        assert loss_went_down(run), (name, losses(run))
    launchers = {n: json.loads(r.command.read_text())["launcher"] for n, r in runs.items()}
    assert launchers == {
        "lora": "python", "qlora": "python", "full": "python", "zero2": "torchrun",
        "ddp2": "torchrun",
    }  # fmt: skip
    assert (runs["zero2"].path / "deepspeed.json").exists()
    assert runs["ddp2"].read_state()["world_size"] == 2
    listed = json.loads(ftui(["runs", "--json"], env).stdout)
    assert {r.run_id for r in runs.values()} <= {r["run_id"] for r in listed}


def test_two_nodes_on_localhost(assets: tuple[Path, Path], env: dict[str, str]) -> None:
    model, data = assets
    port = str(free_port())
    common = ("--method", "lora", "--nodes", "2", "--master-addr", "127.0.0.1",
              "--master-port", port, "--launcher", "torchrun", "--max-steps", "20",
              *TRAIN)  # fmt: skip
    node0 = launch(env, model, data, *common, "--node-rank", "0")
    node1 = launch(env, model, data, *common, "--node-rank", "1")
    for run in (node0, node1):
        assert wait_final(run, env)["status"] == "completed", run.stdout.read_text()[-3000:]
    assert node0.read_state()["world_size"] == 2
    assert [s for s, _ in losses(node0)][-1] == 20
    assert loss_went_down(node0)
    argv = json.loads(node1.command.read_text())["argv"]
    assert argv[argv.index("--node-rank") + 1] == "1"


def test_stop_leaves_a_checkpoint_and_stopped(
    assets: tuple[Path, Path], env: dict[str, str]
) -> None:
    model, data = assets
    run = launch(env, model, data, "--max-steps", "2000", "--save-steps", "1000", *TRAIN)
    wait_for(lambda: len(losses(run)) >= 3, what="three logged steps")
    out = ftui(["stop", run.run_id], env)
    assert out.returncode == 0, out.stderr
    state = wait_final(run, env, timeout=180)
    assert state["status"] == "stopped"
    checkpoints = run.checkpoints_complete()
    assert checkpoints, "stop saved no checkpoint"
    assert int(checkpoints[-1].name.split("-")[1]) < 2000


def test_a_run_outlives_its_terminal_and_survives_sigkill_then_resumes(
    assets: tuple[Path, Path], env: dict[str, str]
) -> None:
    model, data = assets
    # Launch from a shell in its own session, then kill that whole session, as an SSH
    # disconnect does (SIGHUP, then SIGKILL).
    argv = [*ftui_executable(), "launch", "--model", str(model), "--data", str(data),
            "--device", "cpu", "--json", "--max-steps", "600", "--save-steps", "10",
            *TRAIN]  # fmt: skip
    shell = subprocess.Popen(
        ["bash", "-c", 'exec "$@"; ', "launcher", *argv],
        env=env, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    out, _ = shell.communicate(timeout=120)
    from engine.run.rundir import RunDir

    run = RunDir(Path(json.loads(out)["path"]))
    for sig in (signal.SIGHUP, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, sig)
    wait_for(lambda: len(run.checkpoints_complete()) >= 2, what="two checkpoints")
    assert run.read_state()["status"] in ("running", "starting")  # alive after the hangup

    # Now SIGKILL every process of the run: nobody is left to write the end.
    pids = pids_of(run)
    assert pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(1.0)
    status = json.loads(ftui(["status", run.run_id, "--json"], env).stdout)
    assert status["label"] == "failed (killed)", status
    last = run.last_checkpoint()
    assert last is not None
    resumed_from = int(last.name.split("-")[1])

    out2 = ftui(["resume", run.run_id], env)
    assert out2.returncode == 0, out2.stderr
    state = wait_final(run, env)
    assert state["status"] == "completed", run.stdout.read_text()[-3000:]
    steps = [s for s, _ in losses(run)]
    assert steps[-1] == 600  # long enough that the kill lands mid-training on a fast machine
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # history continued cleanly
    assert min(s for s in steps if s > resumed_from) == resumed_from + 1
    listed = {r["run_id"]: r for r in json.loads(ftui(["runs", "--json"], env).stdout)}
    assert listed[run.run_id]["status"] == "completed"


def test_resuming_from_the_last_steps_checkpoint_writes_the_model_without_training_more(
    assets: tuple[Path, Path], env: dict[str, str]
) -> None:
    """A run killed after its checkpoint at max_steps but before final/ was written: `ftui
    resume` makes that checkpoint the model. The HF Trainer alone would train one more step.
    LoRA loads the checkpoint into the model; DeepSpeed (sharded only inside training) copies
    the model files the checkpoint holds."""
    model, data = assets
    runs = {
        "lora": launch(env, model, data, "--max-steps", "10", "--save-steps", "5", *TRAIN),
        "zero2": launch(env, model, data, "--method", "full", "--sharding", "zero2",
                        "--max-steps", "10", "--save-steps", "5", *TRAIN),
    }  # fmt: skip
    import shutil

    for name, run in runs.items():
        assert wait_final(run, env)["status"] == "completed", run.stdout.read_text()[-3000:]
        wait_for(lambda run=run: not pids_of(run), what="the run's processes to exit")
        last = run.last_checkpoint()
        assert last is not None and last.name == "checkpoint-10", name
        weights = "adapter_model.safetensors" if name == "lora" else "model.safetensors"
        trained = (run.final / weights).read_bytes()
        assert (last / weights).read_bytes() == trained, name
        # As if killed between the last checkpoint and final/:
        shutil.rmtree(run.final)
        run.update_state(status="failed", failure="killed", exit_code=-9)
        metrics_before = run.metrics.read_text()

        out = ftui(["resume", run.run_id], env)
        assert out.returncode == 0, out.stdout + out.stderr
        state = wait_final(run, env)
        assert state["status"] == "completed", run.stdout.read_text()[-3000:]
        assert (run.final / weights).read_bytes() == trained, name  # the same model, no step 11
        assert json.loads((run.final / "ftui.json").read_text())["steps"] == 10
        assert run.metrics.read_text() == metrics_before, name  # nothing trained
        assert not (run.checkpoints / "checkpoint-11").exists()
        assert (run.final / "config.json").exists() or (run.final / "adapter_config.json").exists()
        assert not (run.final / "optimizer.pt").exists()


def test_an_early_oom_halves_the_micro_batch_and_keeps_the_effective_batch(
    assets: tuple[Path, Path], env: dict[str, str]
) -> None:
    model, data = assets
    faulty = {**env, "FTUI_FAULT_OOM_ABOVE_BATCH": "2"}  # batches above 2 "run out of memory"
    run = launch(faulty, model, data, "--max-steps", "6", "--batch", "8", "--grad-accum", "1",
                 "--lr", "5e-3", "--seq-len", "128")  # fmt: skip
    state = wait_final(run, env)
    assert state["status"] == "completed", run.stdout.read_text()[-3000:]
    assert state["probe_shrinks"] == 2
    from engine.run.spec import RunSpec

    spec = RunSpec.from_yaml(run.spec.read_text())
    assert (spec.training.batch, spec.training.grad_accum) == (2, 4)  # 8 x 1 == 2 x 4
    shrinks = [e for e in map(json.loads, run.events.read_text().splitlines())
               if e["event"] == "probe_shrink"]  # fmt: skip
    assert [e["batch"] for e in shrinks] == [4, 2]
