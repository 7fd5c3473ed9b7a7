"""The run dashboard, driven headless with Pilot on run directories written by the tests."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from textual.app import App
from textual.notifications import SeverityLevel
from textual.widgets import Label, Log, Static

from engine.run.rundir import RunDir
from tui.app import stylesheets
from tui.screens.dashboard.events import EventList
from tui.screens.dashboard.gpu import DashGpuPanel
from tui.screens.dashboard.screen import ConfirmStop, DashboardScreen, OpenChat
from tui.widgets.chart import BrailleChart

T0 = 1_700_000_000.0
GIB = 1024**3
RUN_ID = "qwen-lora-20231114-221320-ab12"
SIZE = (120, 40)


# -- recorded run directories ------------------------------------------------------------------
def metrics_line(step: int, t: float, steps: int, loss: float | None = None) -> dict[str, Any]:
    if loss is None:
        loss = 2.5 * math.exp(-step / 60) + 0.6 + ((step * 7919) % 100) / 1000
    return {
        "t": t,
        "step": step,
        "epoch": round(step / 100, 4),
        "loss": loss,
        "grad_norm": 1.0 + (step % 5) / 10,
        "lr": 2e-4 * (1 - step / steps),
        "tokens_seen": step * 4096.0,
        "tokens_per_s": 2048.0 + (step * 37) % 200,
        "samples_per_s": 4.0,
        "max_steps": steps,
    }


def gpu_line(
    t: float, gpus: int, i: int, util: float | None = None, peak_gib: float = 60.0
) -> dict[str, Any]:
    return {
        "t": t,
        "gpus": [
            {
                "index": g,
                "used": int((50 + (peak_gib - 50) * min(1.0, i / 20) + g) * GIB),
                "total": 80 * GIB,
                "util": util if util is not None else 90.0 + (i * 13 + g) % 10,
                "temp": 60.0 + i % 10,
                "power": 500.0 + (i * 29) % 100,
            }
            for g in range(gpus)
        ],
    }


def append(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)


def write_run(
    root: Path,
    *,
    status: str = "completed",
    steps: int = 200,
    logged: int | None = None,
    gpus: int = 2,
    t0: float = T0,
    peak_gib: float = 60.0,
    evals: bool = True,
    **state: Any,
) -> RunDir:
    """A run directory as launcher, trainer and supervisor leave it (fixed timestamps)."""
    path = root / RUN_ID
    path.mkdir(parents=True)
    logged = steps if logged is None else logged
    full_state = {
        "run_id": RUN_ID,
        "status": status,
        "model": "Qwen2.5-0.5B",
        "method": "lora",
        "num_gpus": gpus,
        "created_at": t0,
        "train_started_at": t0 + 30,
        "max_steps": steps,
        "host": "gpu-box",
        "plan_summary": {"gpu": "h100", "device_gib": 58.0, "allocated_gib": 41.0},
        **state,
    }
    if status in ("completed", "failed", "stopped"):
        full_state.setdefault("finished_at", t0 + 40 + logged * 2)
    if status in ("running", "starting", "stopping"):  # the supervisor: this test process
        full_state["supervisor_pid"] = os.getpid()
        full_state["supervisor_create_time"] = psutil.Process().create_time()
    (path / "state.json").write_text(json.dumps(full_state))
    records = []
    for step in range(1, logged + 1):
        records.append(metrics_line(step, t0 + 30 + step * 2, steps))
        if evals and step % 50 == 0:
            records.append({"t": t0 + 31 + step * 2, "step": step, "eval_loss": 0.9})
    append(path / "metrics.jsonl", records)
    if gpus:
        samples = [
            gpu_line(t0 + 30 + i * 4, gpus, i, peak_gib=peak_gib) for i in range(logged // 2)
        ]
        append(path / "gpu.jsonl", samples)
    events = [
        {"t": t0, "event": "created", "launcher": "torchrun"},
        {"t": t0 + 2, "event": "launched", "pid": 4242},
        {"t": t0 + 30, "event": "train_begin", "step": 0, "max_steps": steps},
    ]
    if logged >= 100:
        events.append({"t": t0 + 230, "event": "checkpoint", "step": 100})
    append(path / "events.jsonl", events)
    log = "loading checkpoint shards\n" + "".join(f"step {i}: loss ok\n" for i in range(20))
    (path / "stdout.log").write_text(log + " 50%|█████     | 100/200\r 60%|██████    | 120/200\n")
    return RunDir(path)


# -- a tiny app around the screen --------------------------------------------------------------
class RecordingDashboard(DashboardScreen):
    """The real screen, recording the notifications it raises."""

    def __init__(self, run: RunDir, **kwargs: Any) -> None:
        super().__init__(run, **kwargs)
        self.notes: list[tuple[str, str]] = []

    def notify(self, message: str, *, severity: SeverityLevel = "information", **kw: Any) -> None:
        self.notes.append((severity, message))
        super().notify(message, severity=severity, **kw)


class DashApp(App[None]):
    CSS_PATH = stylesheets("dashboard")

    def __init__(self, run: RunDir, **kwargs: Any) -> None:
        super().__init__()
        self.dashboard = RecordingDashboard(run, **kwargs)
        self.chats: list[str] = []

    def on_mount(self) -> None:
        self.push_screen(self.dashboard)

    def on_open_chat(self, message: OpenChat) -> None:
        self.chats.append(message.run_id)


async def wait_until(pilot: Any, condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout  # generous: CI machines are sometimes busy
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await pilot.pause(0.02)
    await pilot.pause()


async def loaded(pilot: Any, polls: int = 1) -> RecordingDashboard:
    app = pilot.app
    await wait_until(pilot, lambda: app.dashboard.polls >= polls)
    return app.dashboard  # type: ignore[no-any-return]


def label_text(screen: DashboardScreen, selector: str) -> str:
    return str(screen.query_one(selector, Label).render())


# -- behaviour -------------------------------------------------------------------------------
async def test_running_run_shows_new_points_as_they_are_written(tmp_path: Path) -> None:
    now = time.time()
    run = write_run(tmp_path, status="running", steps=400, logged=20, t0=now - 100)
    stop = threading.Event()

    def trainer() -> None:
        for step in range(21, 400):
            if stop.wait(0.03):
                return
            append(run.metrics, [metrics_line(step, time.time(), 400)])

    writer = threading.Thread(target=trainer, daemon=True)
    app = DashApp(run, refresh_seconds=0.05)
    try:
        async with app.run_test(size=SIZE) as pilot:
            screen = await loaded(pilot)
            first = screen.frame
            assert first is not None and first.status == "running" and first.step == 20
            writer.start()
            await wait_until(pilot, lambda: (screen.frame.step or 0) >= 40)  # type: ignore[union-attr]
            frame = screen.frame
            assert frame is not None and frame.max_steps == 400
            chart = screen.query_one("#dash-loss", BrailleChart)
            assert len(chart.data.layers[0].xs) >= 40 > len(first.loss_chart.layers[0].xs)
            assert "step" in label_text(screen, "#dash-progress-text")
            assert "ETA" in label_text(screen, "#dash-progress-text")
            assert screen.query_one("#dash-status", Label).has_class("-running")
    finally:
        stop.set()
        writer.join()


async def test_finished_run_replays_final_loss_and_stops_reading(tmp_path: Path) -> None:
    run = write_run(tmp_path, status="completed")
    app = DashApp(run, refresh_seconds=0.02)
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot, polls=3)
        frame = screen.frame
        assert frame is not None
        final = metrics_line(200, 0, 200)["loss"]
        assert frame.loss == final and frame.step == 200
        assert "completed" in label_text(screen, "#dash-status")
        assert screen.query_one("#dash-status", Label).has_class("-completed")
        assert f"loss {final:.4g}" in str(screen.query_one("#dash-metrics", Static).render())
        assert not screen.store.live  # replayed once: only state.json is watched now
        assert [p.view.index for p in screen.query(DashGpuPanel)] == [0, 1]
        assert ("information", f"completed at step 200, final loss {final:.4g}") in screen.notes


async def test_failed_oom_run_raises_an_alert(tmp_path: Path) -> None:
    note = "ran out of GPU memory (launched with a plan of 58.0 GiB per GPU on h100)"
    run = write_run(tmp_path, status="failed", failure="oom", note=note, logged=120, peak_gib=78)
    app = DashApp(run)
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot)
        assert ("error", f"failed: {note}") in screen.notes
        rows = screen.query_one(EventList).rows
        assert rows[-1].alert and rows[-1].severity == "error" and "GPU memory" in rows[-1].text
        assert "failed (oom)" in label_text(screen, "#dash-status")
        assert all(p.has_class("-over-plan") for p in screen.query(DashGpuPanel))


async def test_nan_loss_raises_an_alert(tmp_path: Path) -> None:
    run = write_run(tmp_path, status="running", logged=30, t0=time.time() - 100)
    append(run.metrics, [{**metrics_line(31, time.time(), 200), "loss": None}])
    app = DashApp(run)
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot)
        assert ("error", "loss is NaN at step 31") in screen.notes


async def test_stall_raises_an_alert(tmp_path: Path) -> None:
    now = time.time()
    run = write_run(tmp_path, status="running", logged=0, gpus=1, t0=now - 100)
    append(run.metrics, [metrics_line(s, now - (10 - s) * 0.02, 200) for s in range(1, 11)])
    append(run.gpu, [gpu_line(now, 1, 99, util=1.0)])  # the GPU sits idle
    app = DashApp(run, refresh_seconds=0.05, stall_seconds=0.5)
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot)
        await wait_until(pilot, lambda: any("stalled" in m for _, m in screen.notes))
        assert screen.has_class("-stalled")
        assert "stalled" in label_text(screen, "#dash-status")
        count = len(screen.notes)
        polls = screen.polls
        await wait_until(pilot, lambda: screen.polls >= polls + 3)
        assert len(screen.notes) == count  # alerted once, not every refresh


async def test_stop_asks_then_writes_the_control_file(tmp_path: Path) -> None:
    run = write_run(tmp_path, status="running", logged=10, t0=time.time() - 50)
    app = DashApp(run)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("x")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmStop))
        await pilot.press("n")  # changed their mind
        await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen))
        assert not (run.control / "stop").exists()
        await pilot.press("x")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmStop))
        await pilot.press("y")
        await wait_until(pilot, lambda: (run.control / "stop").exists())
        await wait_until(pilot, lambda: run.read_state().get("status") == "stopping")


async def test_save_now_writes_the_control_file(tmp_path: Path) -> None:
    run = write_run(tmp_path, status="running", logged=10, t0=time.time() - 50)
    app = DashApp(run)
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot)
        await pilot.press("w")
        await wait_until(pilot, lambda: (run.control / "save-now").exists())
        await wait_until(pilot, lambda: any("save requested" in m for _, m in screen.notes))


async def test_stop_on_a_finished_run_explains(tmp_path: Path) -> None:
    run = write_run(tmp_path, status="completed")
    app = DashApp(run)
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot)
        await pilot.press("x")
        await pilot.press("w")
        await wait_until(
            pilot, lambda: len([s for s, _ in screen.notes if s != "information"]) >= 2
        )
        assert not isinstance(app.screen, ConfirmStop)
        assert not (run.control / "stop").exists() and not (run.control / "save-now").exists()


async def test_chat_log_toggle_and_back(tmp_path: Path) -> None:
    run = write_run(tmp_path, status="completed", gpus=0)
    app = DashApp(run)
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot)
        note = str(screen.query_one("#dash-gpu-note").render())
        assert "No GPU data" in note
        log = screen.query_one("#dash-log", Log)
        assert log.lines[-1] == " 60%|██████    | 120/200"  # a progress bar's last state
        await pilot.press("l")
        assert not log.display
        await pilot.press("l")
        assert log.display
        await pilot.press("c")
        await wait_until(pilot, lambda: app.chats == [RUN_ID])
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, DashboardScreen))


async def test_a_partial_last_line_is_not_lost(tmp_path: Path) -> None:
    now = time.time()
    run = write_run(tmp_path, status="running", logged=10, t0=now - 100)
    line = json.dumps(metrics_line(11, now, 200, loss=0.123)) + "\n"
    with run.metrics.open("a") as fh:
        fh.write(line[:25])
    app = DashApp(run, refresh_seconds=0.05)
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot)
        assert screen.frame is not None and screen.frame.step == 10
        with run.metrics.open("a") as fh:
            fh.write(line[25:])
        await wait_until(pilot, lambda: screen.frame is not None and screen.frame.step == 11)
        assert screen.frame is not None and screen.frame.loss == 0.123


async def test_an_unreadable_file_is_reported_and_the_screen_stays_up(tmp_path: Path) -> None:
    run = write_run(tmp_path, status="completed")
    run.metrics.unlink()
    run.metrics.mkdir()  # stat works, reading fails
    app = DashApp(run, refresh_seconds=0.05)
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot, polls=3)
        errors = [m for s, m in screen.notes if s == "error"]
        assert len(errors) == 1 and "cannot read the run" in errors[0]  # said once
        assert isinstance(app.screen, DashboardScreen)


# -- snapshots -------------------------------------------------------------------------------
async def _settle(pilot: Any) -> None:
    # The first frame is drawn at guessed widths; the next ones at the measured widths.
    screen = await loaded(pilot)
    await wait_until(pilot, lambda: screen.settled)
    pilot.app.clear_notifications()  # toasts time out: keep them out of the picture
    # The output pane follows the end of stdout.log; a re-layout at the measured widths can
    # leave it a few lines short of the end depending on timing: draw it at the end.
    for log in pilot.app.screen.query("#dash-log"):
        log.scroll_end(animate=False)
    await pilot.pause()


def test_snapshot_finished_run(snap_compare: Any, tmp_path: Path) -> None:
    run = write_run(tmp_path, status="completed")
    app = DashApp(run, refresh_seconds=0.05)
    assert snap_compare(app, terminal_size=SIZE, run_before=_settle)


def test_snapshot_failed_run(snap_compare: Any, tmp_path: Path) -> None:
    note = "ran out of GPU memory (launched with a plan of 58.0 GiB per GPU on h100)"
    run = write_run(tmp_path, status="failed", failure="oom", note=note, logged=120, peak_gib=78)
    app = DashApp(run, refresh_seconds=0.05)
    assert snap_compare(app, terminal_size=SIZE, run_before=_settle)


# -- small terminals -------------------------------------------------------------------------
def write_cpu_run(tmp_path: Path) -> RunDir:
    """A finished 300-step CPU run: no gpu.jsonl, spec.yaml says device cpu."""
    run = write_run(
        tmp_path, status="completed", steps=300, gpus=0, evals=False, num_gpus=1, plan_summary={}
    )
    run.spec.write_text("model: tiny\ndata: d.jsonl\ndevice: cpu\n")
    return run


async def test_a_cpu_run_at_80x24_charts_its_loss_and_says_cpu(tmp_path: Path) -> None:
    run = write_cpu_run(tmp_path)
    app = DashApp(run, refresh_seconds=0.05)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await loaded(pilot)
        await wait_until(pilot, lambda: screen.settled)
        assert "· CPU" in label_text(screen, "#dash-model")
        assert "GPU" not in label_text(screen, "#dash-model")
        assert not screen.query_one("#dash-gpus").display  # no empty GPU panel
        for chart_id in ("#dash-loss", "#dash-lr"):
            chart = screen.query_one(chart_id, BrailleChart)
            assert chart.content_size.height >= 3 and chart.content_size.width >= 30
            drawn = "".join(strip.text for strip in chart.draw(*chart.content_size))
            assert "no data yet" not in drawn and "too small" not in drawn


def test_snapshot_cpu_run_80x24(snap_compare: Any, tmp_path: Path) -> None:
    app = DashApp(write_cpu_run(tmp_path), refresh_seconds=0.05)
    assert snap_compare(app, terminal_size=(80, 24), run_before=_settle)


def test_snapshot_gpu_run_80x24(snap_compare: Any, tmp_path: Path) -> None:
    app = DashApp(write_run(tmp_path, status="completed", evals=False), refresh_seconds=0.05)
    assert snap_compare(app, terminal_size=(80, 24), run_before=_settle)
