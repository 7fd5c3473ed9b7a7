"""The runs screen, driven headless with Pilot on run directories written by hand."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from textual.app import App
from textual.screen import Screen
from textual.widgets import Button, Input

from engine.paths import runs_root
from tui.app import stylesheets
from tui.screens.runs.dialogs import DeleteRunScreen, StopRunScreen
from tui.screens.runs.screen import OpenDashboard, RunsScreen
from tui.screens.runs.table import RunsTable

NOW = 1_750_000_000.0  # frozen "now" for ages


class Harness(App[None]):
    """A tiny app that pushes one screen and records the dashboards it is asked to open."""

    CSS_PATH = stylesheets("runs", "plan")

    def __init__(self, make_screen: Callable[[], Screen[Any]]) -> None:
        super().__init__()
        self.make_screen = make_screen
        self.opened: list[str] = []

    def on_mount(self) -> None:
        self.push_screen(self.make_screen())

    def on_open_dashboard(self, message: OpenDashboard) -> None:
        self.opened.append(message.run_id)


async def wait_until(pilot: Any, condition: Callable[[], bool], timeout: float = 30) -> None:
    """Let workers and messages run until `condition` holds (generous for busy CI)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.02)
    await pilot.pause()


def write_run(
    root: Path,
    run_id: str,
    *,
    status: str,
    created_at: float,
    failure: str | None = None,
    steps: list[tuple[int, float]] = (),  # type: ignore[assignment]
    max_steps: int = 100,
    model: str = "tiny-model",
    method: str = "lora",
    num_gpus: int = 1,
) -> Path:
    path = root / run_id
    (path / "control").mkdir(parents=True)
    state: dict[str, Any] = {
        "status": status,
        "run_id": run_id,
        "created_at": created_at,
        "model": model,
        "method": method,
        "num_gpus": num_gpus,
    }
    if failure:
        state["failure"] = failure
    if status in ("running", "starting", "stopping"):
        # A live "supervisor" (this test process), so reconcile() keeps the run alive.
        me = psutil.Process()
        state["supervisor_pid"] = me.pid
        state["supervisor_create_time"] = me.create_time()
    (path / "state.json").write_text(json.dumps(state))
    with (path / "metrics.jsonl").open("w") as fh:
        for step, loss in steps:
            fh.write(json.dumps({"step": step, "max_steps": max_steps, "loss": loss}) + "\n")
    return path


@pytest.fixture
def three_runs(isolated_home: Path) -> Path:
    root = runs_root()
    write_run(
        root,
        "qwen-lora-running",
        status="running",
        created_at=NOW - 300,
        steps=[(10, 2.5), (20, 1.8765)],
        model="qwen2.5-0.5b",
        num_gpus=2,
    )
    write_run(
        root,
        "llama-full-completed",
        status="completed",
        created_at=NOW - 2 * 3600,
        steps=[(100, 0.4321)],
        method="full",
        model="llama-3.2-1b",
    )
    write_run(
        root,
        "tiny-qlora-failed",
        status="failed",
        failure="oom",
        created_at=NOW - 3 * 86400,
        steps=[(5, 3.0)],
        method="qlora",
    )
    return root


def runs_app(**kwargs: Any) -> Harness:
    return Harness(lambda: RunsScreen(clock=lambda: NOW, **kwargs))


async def open_runs(pilot: Any) -> RunsScreen:
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, RunsScreen))
    screen = pilot.app.screen
    await wait_until(pilot, lambda: screen.refreshes >= 1)
    return screen


def select(screen: RunsScreen, run_id: str) -> None:
    table = screen.query_one(RunsTable)
    table.move_cursor(row=table.get_row_index(run_id))


async def test_runs_show_status_age_progress_and_loss(three_runs: Path) -> None:
    app = runs_app()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_runs(pilot)
        table = screen.query_one(RunsTable)
        assert table.run_ids == ["qwen-lora-running", "llama-full-completed", "tiny-qlora-failed"]
        rows = {rid: [str(c) for c in table.get_row(rid)] for rid in table.run_ids}
        assert rows["qwen-lora-running"][1:5] == ["running", "5m", "20/100 (20%)", "1.8765"]
        assert rows["qwen-lora-running"][5:] == ["2", "qwen2.5-0.5b (lora)"]
        assert rows["llama-full-completed"][1:5] == ["completed", "2h", "100/100 (100%)", "0.4321"]
        assert rows["tiny-qlora-failed"][1:5] == ["failed (oom)", "3d", "5/100 (5%)", "3.0000"]


async def test_enter_opens_the_dashboard(three_runs: Path) -> None:
    app = runs_app()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_runs(pilot)
        select(screen, "llama-full-completed")
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.opened == ["llama-full-completed"])


async def test_cursor_stays_on_its_run_across_refreshes(three_runs: Path) -> None:
    app = runs_app(refresh_seconds=0.05)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_runs(pilot)
        select(screen, "tiny-qlora-failed")
        table = screen.query_one(RunsTable)
        seen = screen.refreshes
        await wait_until(pilot, lambda: screen.refreshes >= seen + 2)
        assert table.selected_run_id == "tiny-qlora-failed"
        # A newer run appears at the top: the cursor follows its run, not its row number.
        write_run(three_runs, "new-run", status="completed", created_at=NOW - 10)
        await wait_until(pilot, lambda: "new-run" in table.run_ids)
        assert table.selected_run_id == "tiny-qlora-failed"
        assert table.cursor_row == 3


async def test_filter_narrows_the_rows(three_runs: Path) -> None:
    app = runs_app()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_runs(pilot)
        table = screen.query_one(RunsTable)
        await pilot.press("slash")
        await pilot.press(*"oom")
        await pilot.pause()
        assert table.run_ids == ["tiny-qlora-failed"]
        await pilot.press("escape")
        await pilot.pause()
        assert len(table.run_ids) == 3
        assert not screen.query_one("#runs-filter", Input).display


async def test_stop_asks_then_writes_the_stop_request(three_runs: Path) -> None:
    app = runs_app()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_runs(pilot)
        run = three_runs / "qwen-lora-running"
        select(screen, "qwen-lora-running")
        await pilot.press("x")
        await wait_until(pilot, lambda: isinstance(app.screen, StopRunScreen))
        await pilot.press("escape")  # cancel: nothing happens
        await pilot.pause()
        assert not (run / "control" / "stop").exists()

        await pilot.press("x")
        await wait_until(pilot, lambda: isinstance(app.screen, StopRunScreen))
        assert app.screen.focused is app.screen.query_one("#stop-graceful", Button)
        await pilot.press("enter")  # the focused button: stop with a checkpoint (never kill)
        await wait_until(pilot, lambda: (run / "control" / "stop").exists())
        table = screen.query_one(RunsTable)
        await wait_until(pilot, lambda: str(table.get_row("qwen-lora-running")[1]) == "stopping")


async def test_save_now_writes_the_request(three_runs: Path) -> None:
    app = runs_app()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_runs(pilot)
        select(screen, "qwen-lora-running")
        await pilot.press("w")
        await wait_until(
            pilot, lambda: (three_runs / "qwen-lora-running/control/save-now").exists()
        )
        # A finished run cannot save: the engine's message becomes a notification.
        select(screen, "llama-full-completed")
        await pilot.press("w")
        await wait_until(
            pilot, lambda: any("only a running run" in n.message for n in app._notifications)
        )


async def test_resume_reports_the_engine_error(three_runs: Path) -> None:
    app = runs_app()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_runs(pilot)
        select(screen, "llama-full-completed")
        await pilot.press("u")
        await pilot.pause()
        assert any("only a stopped or failed" in n.message for n in app._notifications)
        select(screen, "tiny-qlora-failed")
        await pilot.press("u")
        await wait_until(
            pilot, lambda: any("no complete checkpoint" in n.message for n in app._notifications)
        )
        assert json.loads((three_runs / "tiny-qlora-failed/state.json").read_text())["status"] == (
            "failed"
        )


async def test_delete_asks_and_only_deletes_after_confirming(three_runs: Path) -> None:
    app = runs_app()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_runs(pilot)
        run = three_runs / "llama-full-completed"
        select(screen, "llama-full-completed")
        await pilot.press("d")
        await wait_until(pilot, lambda: isinstance(app.screen, DeleteRunScreen))
        dialog = app.screen
        text = " ".join(str(s.render()) for s in dialog.query(".runs-dialog-text"))
        assert "llama-full-completed" in str(dialog.query_one("Label").render())
        assert str(run) in text and "cannot be undone" in text
        await pilot.press("enter")  # nothing typed: nothing happens
        await pilot.pause()
        assert app.screen is dialog and run.exists()
        assert dialog.query_one("#delete-yes", Button).disabled
        await pilot.press(*"nope", "enter")
        await pilot.pause()
        assert app.screen is dialog and run.exists()
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is screen and run.exists()

        await pilot.press("d")
        await wait_until(pilot, lambda: isinstance(app.screen, DeleteRunScreen))
        await pilot.press(*"delete", "enter")
        await wait_until(pilot, lambda: not run.exists())
        table = screen.query_one(RunsTable)
        await wait_until(pilot, lambda: "llama-full-completed" not in table.run_ids)


async def test_delete_refuses_a_running_run(three_runs: Path) -> None:
    app = runs_app()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_runs(pilot)
        select(screen, "qwen-lora-running")
        await pilot.press("d")
        await pilot.pause()
        await asyncio.sleep(0.1)
        await pilot.pause()
        assert app.screen is screen
        assert any("stop it" in n.message for n in app._notifications)
        assert (three_runs / "qwen-lora-running").exists()


async def test_no_runs_says_how_to_start_one(isolated_home: Path) -> None:
    app = runs_app()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_runs(pilot)
        assert "No runs yet" in str(screen.query_one("#runs-status").render())
        await pilot.press("x")  # nothing selected: a hint, no crash
        await pilot.pause()


def test_runs_screen_snapshot(three_runs: Path, snap_compare: Any) -> None:
    async def settle(pilot: Any) -> None:
        screen = await open_runs(pilot)
        select(screen, "llama-full-completed")
        await pilot.pause()

    assert snap_compare(runs_app(), terminal_size=(120, 40), run_before=settle)


def test_runs_screen_snapshot_80x24(three_runs: Path, snap_compare: Any) -> None:
    async def settle(pilot: Any) -> None:
        screen = await open_runs(pilot)
        select(screen, "llama-full-completed")
        await pilot.pause()

    assert snap_compare(runs_app(), terminal_size=(80, 24), run_before=settle)


def write_server(run_path: Path, *, status: str = "ready", started_at: float = NOW - 600) -> None:
    """A server record of `run_path` (this test process as its live server) and its request
    log: ten answers (nine of 300 ms, one of 2 s), one refused request, and one from an
    earlier server of the run, which must not count."""
    me = psutil.Process()
    serve = run_path / "serve"
    serve.mkdir()
    record = {"run_id": run_path.name, "status": status, "pid": me.pid,
              "create_time": me.create_time(), "url": "http://127.0.0.1:8000", "api_key": False,
              "started_at": started_at, "ready_at": started_at + 30}  # fmt: skip
    (serve / "server.json").write_text(json.dumps(record))
    lines = [{"t": started_at - 100, "status": 200, "total_s": 50.0, "ttft_s": 9.0,
              "tokens_per_s": 1.0, "completion_tokens": 5}]  # fmt: skip
    for i in range(10):
        slow = i == 9
        lines.append({"t": started_at + 60 + i, "status": 200, "completion_tokens": 64,
                      "ttft_s": 0.02, "total_s": 2.0 if slow else 0.3,
                      "tokens_per_s": 100.0 if slow else 400.0})  # fmt: skip
    lines.append({"t": started_at + 80, "status": 400, "error": "bad"})
    (serve / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


@pytest.fixture
def served_runs(three_runs: Path) -> Path:
    write_server(three_runs / "llama-full-completed")
    write_server(three_runs / "tiny-qlora-failed", status="stopped")  # not running: not shown
    return three_runs


async def test_running_servers_show_requests_speed_and_latency(served_runs: Path) -> None:
    from tui.screens.runs.servers import ServersTable

    app = runs_app()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_runs(pilot)
        table = screen.query_one(ServersTable)
        assert table.display and screen.query_one("#servers-title").display
        assert [str(r.key.value) for r in table.ordered_rows] == ["llama-full-completed"]
        row = [str(c) for c in table.get_row("llama-full-completed")]
        # requests, median decode tokens/s, total time p50 / p95, first token p50, status, up
        assert row == ["llama-full-completed", "11 (1 failed)", "400.0", "300 ms / 1.2 s",
                       "20 ms", "ready", "http://127.0.0.1:8000", "9m"]  # fmt: skip
        assert "Servers (1)" in str(screen.query_one("#servers-title").render())


async def test_no_server_no_servers_section(three_runs: Path) -> None:
    from tui.screens.runs.servers import ServersTable

    app = runs_app()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_runs(pilot)
        assert not screen.query_one(ServersTable).display
        write_server(three_runs / "llama-full-completed")  # a server starts: shown at refresh
        await pilot.press("r")
        await wait_until(pilot, lambda: screen.query_one(ServersTable).row_count == 1)
        assert screen.query_one(ServersTable).display


def test_runs_screen_with_a_server_snapshot_80x24(served_runs: Path, snap_compare: Any) -> None:
    async def settle(pilot: Any) -> None:
        screen = await open_runs(pilot)
        select(screen, "llama-full-completed")
        await pilot.pause()

    assert snap_compare(runs_app(), terminal_size=(80, 24), run_before=settle)
