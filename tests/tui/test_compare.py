"""Comparing runs: `ftui compare` (a real subprocess) on the demo training and a recorded
run, the compare screen driven with Pilot, marking runs in the runs list, snapshots."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from typing import Any

import pytest
from textual.app import App
from textual.widgets import DataTable, TabbedContent

from engine.paths import runs_root
from engine.run.rundir import RunDir
from tests.conftest import ftui_executable
from tests.tui.test_runs_screen import wait_until
from tui.app import stylesheets
from tui.screens.compare.screen import CompareScreen
from tui.screens.runs.screen import OpenCompare, RunsScreen
from tui.screens.runs.table import RunsTable
from tui.widgets.chart import BrailleChart

T0 = 1_700_000_000.0
SPEC = """model: ftui-tiny
data: /data/fruits.jsonl
device: cpu
training:
  method: lora
  rank: {rank}
  seq_len: 128
hyper:
  max_steps: {steps}
  learning_rate: {lr}
"""


def recorded_run(
    run_id: str,
    *,
    steps: int,
    rank: int = 16,
    lr: float = 5e-3,
    stopped_at: int | None = None,
    seconds_per_step: float = 2.0,
    tokens_per_step: float = 1000.0,
) -> RunDir:
    """A finished run folder as the trainer leaves it; with `stopped_at`, the run stopped at
    that step for a day and was resumed (events say so; the gap is not training time)."""
    path = runs_root() / run_id
    path.mkdir(parents=True)
    (path / "spec.yaml").write_text(SPEC.format(rank=rank, steps=steps, lr=lr))
    state = {"run_id": run_id, "status": "completed", "model": "ftui-tiny", "method": "lora",
             "num_gpus": 0, "created_at": T0, "max_steps": steps}  # fmt: skip
    (path / "state.json").write_text(json.dumps(state))
    begins = [T0 + 10]
    metrics = []
    t = begins[0]
    for step in range(1, steps + 1):
        if step - 1 == stopped_at:
            t += 86_400  # a day stopped, then resumed
            begins.append(t)
        t += seconds_per_step
        loss = 2.0 * math.exp(-step / (steps / 3)) + 0.3 + rank / 400
        metrics.append({"t": t, "step": step, "loss": loss, "lr": lr * (1 - step / steps),
                        "tokens_seen": step * tokens_per_step,
                        "tokens_per_s": tokens_per_step / seconds_per_step})  # fmt: skip
        if step % 20 == 0:
            metrics.append({"t": t + 0.5, "step": step, "eval_loss": loss + 0.1,
                            "tokens_seen": step * tokens_per_step})  # fmt: skip
    (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    events = [{"t": b, "event": "train_begin", "step": 0} for b in begins]
    (path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return RunDir(path)


def copy_run(run: RunDir) -> RunDir:
    """A run's small files (no checkpoints) under this test's runs root."""
    target = runs_root() / run.run_id
    target.mkdir(parents=True)
    for name in ("spec.yaml", "state.json", "metrics.jsonl", "events.jsonl"):
        shutil.copy(run.path / name, target / name)
    return RunDir(target)


def ftui(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ftui_executable(), *args], env=env, capture_output=True, text=True, timeout=120
    )


# -- the command line --------------------------------------------------------------------------
def test_compare_json_lines_up_a_real_run_and_a_resumed_one(
    demo_run: RunDir, cli_env: dict[str, str]
) -> None:
    demo = copy_run(demo_run)  # 120 steps of the demo, trained for real
    recorded_run("resumed-rank8", steps=60, rank=8, lr=1e-3, stopped_at=30)
    out = ftui(cli_env, "compare", demo.run_id, "resumed", "--json", "--x", "time")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["axis"] == "time"
    runs = {r["run_id"]: r for r in data["runs"]}
    assert runs[demo.run_id]["steps"] == 120 and runs["resumed-rank8"]["steps"] == 60
    assert runs["resumed-rank8"]["resumes"] == 1
    # 60 steps of 2 s, the day it sat stopped not counted:
    assert runs["resumed-rank8"]["train_seconds"] == pytest.approx(120.0)
    loss = data["series"]["loss"]
    assert set(loss) == {demo.run_id, "resumed-rank8"}
    xs = loss["resumed-rank8"]["x"]
    assert xs == sorted(xs) and xs[-1] == pytest.approx(120.0) and xs[0] == pytest.approx(2.0)
    assert len(loss[demo.run_id]["x"]) == len(loss[demo.run_id]["y"]) > 10
    assert data["series"]["eval_loss"]["resumed-rank8"]["y"]  # eval lines lined up too
    diff = data["spec_diff"]
    assert diff["training.rank"] == {demo.run_id: 16, "resumed-rank8": 8}
    assert diff["hyper.max_steps"] == {demo.run_id: 120, "resumed-rank8": 60}
    assert "training.method" not in diff and "device" not in diff  # the same in both

    by_step = json.loads(ftui(cli_env, "compare", demo.run_id, "resumed", "--json").stdout)
    assert by_step["series"]["loss"]["resumed-rank8"]["x"][-1] == 60.0
    assert by_step["series"]["loss"][demo.run_id]["x"][-1] == 120.0


def test_compare_text_and_bad_input(cli_env: dict[str, str]) -> None:
    recorded_run("short-a", steps=40, rank=16)
    recorded_run("long-b", steps=80, rank=4)
    out = ftui(cli_env, "compare", "short-a", "long-b", "--x", "tokens")
    assert out.returncode == 0, out.stderr
    assert "best loss (step)" in out.stdout and "training.rank" in out.stdout
    assert "loss at tokens seen" in out.stdout
    for args, said in (
        (("short-a",), "two runs or more"),
        (("short-a", "nope"), "no run 'nope'"),
        (("short-a", "short-a"), "named twice"),
    ):
        bad = ftui(cli_env, "compare", *args)
        assert bad.returncode == 2 and said in bad.stderr and "Traceback" not in bad.stderr


# -- the screen --------------------------------------------------------------------------------
class CompareApp(App[None]):
    CSS_PATH = stylesheets("compare", "runs")

    def __init__(self, screen_factory: Any) -> None:
        super().__init__()
        self.screen_factory = screen_factory
        self.compared: list[list[str]] = []

    def on_mount(self) -> None:
        self.push_screen(self.screen_factory())

    def on_open_compare(self, message: OpenCompare) -> None:
        self.compared.append(message.run_ids)


def two_runs() -> list[RunDir]:
    return [
        recorded_run("rank16-short", steps=60, rank=16),
        recorded_run("rank4-long", steps=120, rank=4, lr=1e-3, stopped_at=50,
                     seconds_per_step=1.0, tokens_per_step=1500.0),
    ]  # fmt: skip


async def test_the_compare_screen_overlays_runs_and_switches_the_axis() -> None:
    runs = two_runs()
    app = CompareApp(lambda: CompareScreen(runs))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        await wait_until(pilot, lambda: screen.reads == 1)
        loss = screen.query_one("#compare-loss", BrailleChart)
        assert [layer.component for layer in loss.data.layers] == ["chart--run-0", "chart--run-1"]
        assert [layer.xs[-1] for layer in loss.data.layers] == [60.0, 120.0]
        await pilot.press("x")  # tokens seen
        assert screen.axis == "tokens"
        assert [layer.xs[-1] for layer in loss.data.layers] == [60_000.0, 180_000.0]
        await pilot.press("x")  # training time: the resumed run's day off is not counted
        assert [layer.xs[-1] for layer in loss.data.layers] == [120.0, 120.0]
        lr = screen.query_one("#compare-lr", BrailleChart)
        assert len(lr.data.layers) == 2
        await pilot.press("v")
        assert screen.query_one(TabbedContent).active == "compare-numbers-tab"
        summary = screen.query_one("#compare-summary", DataTable)
        status = summary.get_row_at(0)
        assert status == ["status", "completed", "completed, resumed 1×"]
        steps = summary.get_row_at(1)
        assert steps == ["steps", "60", "120"]
        diff = screen.query_one("#compare-diff", DataTable)
        fields = [str(diff.get_row_at(i)[0]) for i in range(diff.row_count)]
        assert fields == ["hyper.learning_rate", "hyper.max_steps", "training.rank"]
        await pilot.press("escape")
        assert not isinstance(app.screen, CompareScreen)


async def test_marking_runs_in_the_runs_list_opens_the_comparison() -> None:
    two_runs()
    recorded_run("third", steps=10)
    app = CompareApp(lambda: RunsScreen(refresh_seconds=60))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        await wait_until(pilot, lambda: isinstance(screen, RunsScreen) and screen.refreshes > 0)
        table = screen.query_one(RunsTable)
        await pilot.press("c")  # nothing marked yet: it says how
        assert app.compared == []
        first = table.selected_run_id
        await pilot.press("space")  # marks and moves down
        second = table.selected_run_id
        await pilot.press("space")
        assert table.marked == [first, second]
        assert str(table.get_cell(first, "run")).startswith("● ")
        await pilot.press("c")
        await wait_until(pilot, lambda: app.compared == [[first, second]])


async def _settle(pilot: Any) -> None:
    screen = pilot.app.screen
    await wait_until(pilot, lambda: screen.reads == 1)
    await pilot.pause()
    screen._measure()
    await pilot.pause()


def test_compare_snapshot_80x24(snap_compare: Any) -> None:
    runs = two_runs()
    app = CompareApp(lambda: CompareScreen(runs))
    assert snap_compare(app, terminal_size=(80, 24), run_before=_settle)
