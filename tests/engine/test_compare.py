"""Runs lined up for comparison: resumed runs, stopped gaps, eval lines, spec differences."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.errors import FtuiError
from engine.monitor.compare import compare_runs, read_history, spec_diff, value_at
from engine.run.rundir import RunDir

T0 = 1_700_000_000.0


def write(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def recorded_run(
    root: Path,
    run_id: str,
    metrics: list[dict[str, Any]],
    begins: list[float],
    spec: str = "model: tiny\ndata: d.jsonl\ntraining:\n  rank: 16\n",
) -> RunDir:
    path = root / run_id
    path.mkdir(parents=True)
    write(path / "state.json", [])  # replaced below
    (path / "state.json").write_text(json.dumps({"status": "completed", "max_steps": 10}))
    (path / "spec.yaml").write_text(spec)
    write(path / "metrics.jsonl", metrics)
    write(path / "events.jsonl", [{"t": t, "event": "train_begin"} for t in begins])
    return RunDir(path)


def line(step: int, t: float, **extra: Any) -> dict[str, Any]:
    return {"t": t, "step": step, "loss": 2.0 - step / 10, "lr": 1e-3,
            "tokens_seen": step * 100.0, "tokens_per_s": 50.0, **extra}  # fmt: skip


def test_a_resumed_run_does_not_count_the_stopped_hours(tmp_path: Path) -> None:
    # Steps 1-5 at 1 s each, stopped for a day, resumed (train_begin) and 5 more steps.
    resumed_at = T0 + 86_400
    metrics = [line(s, T0 + s) for s in range(1, 6)]
    metrics += [line(s, resumed_at + (s - 5)) for s in range(6, 11)]
    run = recorded_run(tmp_path, "resumed", metrics, [T0, resumed_at])
    history = read_history(run)
    assert [p.step for p in history.points] == list(range(1, 11))
    assert [p.seconds for p in history.points] == [float(s) for s in range(1, 11)]
    assert history.resumes == 1


def test_an_abandoned_attempt_left_in_the_file_is_dropped(tmp_path: Path) -> None:
    # Killed at step 8 after a checkpoint at 5; resumed from 5 without the file being cut.
    resumed_at = T0 + 1000
    metrics = [line(s, T0 + s) for s in range(1, 9)]
    metrics += [line(s, resumed_at + (s - 5), loss=0.5) for s in range(6, 9)]
    run = recorded_run(tmp_path, "killed", metrics, [T0, resumed_at])
    history = read_history(run)
    assert [p.step for p in history.points] == list(range(1, 9))
    assert [p.values["loss"] for p in history.points[5:]] == [0.5, 0.5, 0.5]
    assert history.points[-1].seconds == 8.0


def test_eval_lines_join_their_step(tmp_path: Path) -> None:
    metrics = [line(s, T0 + s) for s in range(1, 5)]
    metrics.insert(2, {"t": T0 + 2.5, "step": 2, "eval_loss": 1.7})
    run = recorded_run(tmp_path, "evals", metrics, [T0])
    history = read_history(run)
    xs, ys = history.series("eval_loss", "tokens")
    assert (xs, ys) == ([200.0], [1.7])
    assert history.points[2].seconds == 3.0  # the eval's own time is training time too


def test_spec_diff_lists_only_fields_that_differ() -> None:
    a = {"model": "m", "training": {"rank": 16, "alpha": 32}, "plan": {"gpu": "h100"}}
    b = {"model": "m", "training": {"rank": 8, "alpha": 32}, "plan": {"gpu": "a100"}}
    c = {"model": "m", "training": {"alpha": 32}}
    diff = spec_diff({"a": a, "b": b, "c": c})
    assert diff == {"training.rank": {"a": 16, "b": 8, "c": None}}


def test_one_run_or_the_same_run_twice_is_refused(tmp_path: Path) -> None:
    run = recorded_run(tmp_path, "only", [line(1, T0)], [T0])
    with pytest.raises(FtuiError, match="two runs or more"):
        compare_runs([run])
    with pytest.raises(FtuiError, match="named twice"):
        compare_runs([run, run])


def test_value_at_reads_the_last_value_logged_up_to_x() -> None:
    xs, ys = [1.0, 2.0, 4.0], [10.0, 20.0, 40.0]
    assert value_at(xs, ys, 3.0) == 20.0
    assert value_at(xs, ys, 4.0) == 40.0
    assert value_at(xs, ys, 0.5) is None and value_at(xs, ys, 5.0) is None
