"""The GPU check's --smoke path, run for real: the same script a GPU box runs, on the CPU with
tiny configurations (real subprocesses, a real `ftui launch`, real Trainer steps)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.gpu_check.grid import smoke_rows
from benchmarks.gpu_check.report import COLUMNS
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def gpu_check(out: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        [str(REPO / "scripts" / "gpu-check"), "--smoke", "--out", str(out), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_outputs(out: Path) -> tuple[list[dict[str, str]], dict[str, Any], str]:
    with (out / "grid.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        rows = list(reader)
    summary = json.loads((out / "summary.json").read_text())
    return rows, summary, (out / "gpu-check.log").read_text()


def test_smoke_measures_every_row_and_checks_the_launch(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = gpu_check(out, "--budget-s", "500", "--work", str(tmp_path / "work"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows, summary, log = read_outputs(out)

    # The grid: every smoke row ran in its own worker, trained, and was predicted.
    assert [r["id"] for r in rows] == [row.id for row in smoke_rows()]
    for row in rows:
        assert row["status"] == "ok", row["error"]
        assert row["device"] == "cpu" and row["steps"] == "4"
        assert float(row["tokens_per_s"]) > 0
        assert float(row["pred_allocated_gib"]) > 0 and float(row["pred_tokens_per_s"]) > 0
        assert int(row["params"]) > 0
    assert {r["method"] for r in rows} == {"lora", "full", "qlora"}
    assert summary["finished"] is True and summary["mode"] == "smoke"
    assert summary["grid"]["rows_run"] == len(rows) and not summary["grid"]["stopped_by_budget"]
    assert summary["grid_errors"]["ok"] == len(rows)

    # The machine section compared ftui with nvidia-smi (absent here) and torch.
    machine = summary["machine"]
    assert machine["ftui_gpus"]["gpus"] == [] and machine["ftui_gpus"]["no_gpu_reason"]
    assert "torch" in machine["ftui_doctor"]["checks"]
    assert machine["torch"]["available"] is False
    assert isinstance(machine["disagreements"], list)

    # ftui's own path: a real detached launch that completed and left its files.
    launch = summary["launch"]
    assert launch["status"] == "completed", launch
    statuses = {c["check"]: c["status"] for c in launch["checks"]}
    assert "failed" not in statuses.values(), launch["checks"]
    assert statuses["metrics.jsonl: one line per step"] == "ok"
    assert statuses["dashboard model: headless (textual not imported)"] == "ok"
    metrics = (out / "launch-metrics.jsonl").read_text().splitlines()
    assert len([m for m in metrics if '"loss"' in m]) == launch["setup"]["steps"]
    assert json.loads((out / "launch-state.json").read_text())["status"] == "completed"

    # At most 8 files, none in a subfolder: what a constrained slot brings back.
    files = list(out.iterdir())
    assert len(files) <= 8 and all(f.is_file() for f in files)
    assert "grid 3/3" in log and "done in" in log


def test_budget_spent_before_the_grid_still_writes_everything(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # 10 s of the budget are kept for the summary and a smoke row needs 5: no row can start.
    proc = gpu_check(out, "--skip-launch", "--budget-s", "14", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows, summary, log = read_outputs(out)
    assert rows == []
    assert summary["finished"] is True and summary["grid"]["stopped_by_budget"] is True
    assert "machine" in summary and "launch" not in summary
    assert "budget spent, 3 rows not run" in log


def test_a_configuration_that_hangs_is_killed_and_recorded(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = gpu_check(
        out, "--skip-launch", "--max-rows", "1", "--row-timeout-s", "1", "--budget-s", "120"
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows, summary, _log = read_outputs(out)
    assert [r["status"] for r in rows] == ["timeout"]
    assert rows[0]["pred_allocated_gib"]  # the prediction is kept even without a measurement
    assert summary["finished"] is True and summary["grid_errors"]["failed"] == 1
