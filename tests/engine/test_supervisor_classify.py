"""How the supervisor names a run's end from the launcher's exit code and what the trainer
recorded."""

from __future__ import annotations

from pathlib import Path

from engine.run.rundir import RunDir, write_json_atomic
from engine.run.supervisor import classify


def _run(tmp_path: Path, **state: object) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.path.mkdir(parents=True)
    write_json_atomic(run.state, {"status": "running", **state})
    return run


def test_a_launcher_that_fails_after_the_model_was_saved_leaves_the_run_completed(
    tmp_path: Path,
) -> None:
    run = _run(tmp_path, status="completed")
    (run.final).mkdir()  # the trainer saved the model, then recorded the end
    # torch.distributed's teardown aborted a rank after that: the launcher exits 1
    end = classify(run, 1, stop_now=False)
    assert end["status"] == "completed"
    assert "exited with code 1" in end["note"]


def test_a_launcher_that_fails_before_the_model_is_saved_is_a_failure(tmp_path: Path) -> None:
    run = _run(tmp_path, status="completed")  # recorded, but final/ never written
    assert classify(run, 1, stop_now=False)["status"] == "failed"
    running = _run(tmp_path / "other")
    (running.final).mkdir()
    assert classify(running, 1, stop_now=False)["status"] == "failed"
