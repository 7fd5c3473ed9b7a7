"""The runs screen: every run with status, age, progress and last loss; open, stop, save-now,
resume and delete; mark runs (space) and compare them (c). Under the runs, while any run is
served, its server's requests, tokens/s and latency (tui/screens/runs/servers.py). The list
refreshes every ~2 s in a thread worker, re-armed after each refresh was shown; every engine
call runs in a thread worker and reports back by message."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.notifications import SeverityLevel
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Header, Input, Static
from textual.worker import get_current_worker

from engine.errors import FtuiError
from engine.run.operations import (
    RunInfo,
    delete_run,
    list_runs,
    reconcile,
    resume,
    run_size_bytes,
    save_now,
    stop,
)
from engine.run.rundir import FINAL, RunDir
from engine.serve.state import ServerInfo, list_servers
from tui.screens.runs.dialogs import DeleteRunScreen, DeletionInfo, StopRunScreen
from tui.screens.runs.servers import ServersTable, shown_servers
from tui.screens.runs.table import RunsTable, matches

REFRESH_SECONDS = 2.0


class OpenDashboard(Message):
    """Open the live dashboard of a run (the app pushes the dashboard screen)."""

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id


class OpenCompare(Message):
    """Compare these runs (the app pushes the compare screen)."""

    def __init__(self, run_ids: list[str]) -> None:
        super().__init__()
        self.run_ids = run_ids


class RunsUpdated(Message):
    """A fresh list of runs from the refresh worker."""

    def __init__(
        self,
        infos: list[RunInfo],
        error: str | None = None,
        servers: list[ServerInfo] | None = None,
    ) -> None:
        super().__init__()
        self.infos = infos
        self.error = error
        self.servers = servers or []


class RunActionDone(Message):
    """An engine call on a run finished: what to tell the user."""

    def __init__(self, text: str, *, severity: SeverityLevel = "information") -> None:
        super().__init__()
        self.text = text
        self.severity: SeverityLevel = severity


class DeletionReady(Message):
    """What deleting a run would remove, gathered off the UI thread."""

    def __init__(self, info: DeletionInfo) -> None:
        super().__init__()
        self.info = info


# -- headless helpers --------------------------------------------------------------------------


def deletion_info(run: RunDir) -> DeletionInfo:
    state = reconcile(run)
    return DeletionInfo(
        run_id=run.run_id,
        path=str(run.path),
        status=str(state.get("status", "starting")),
        checkpoints=len(run.checkpoints_complete()),
        has_final=run.final.is_dir(),
        size_bytes=run_size_bytes(run.path),
    )


# -- the screen ------------------------------------------------------------------------------


class RunsScreen(Screen[None]):
    BINDINGS = [
        Binding("enter", "open", "Open", show=False),  # the table's own enter shows "Open"
        Binding("x", "stop", "Stop"),
        Binding("w", "save_now", "Save now"),
        Binding("u", "resume", "Resume"),
        Binding("d", "delete", "Delete"),
        Binding("space", "mark", "Mark"),
        Binding("c", "compare", "Compare"),
        Binding("slash", "filter", "Filter"),
        Binding("r", "refresh", "Refresh", show=False),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(
        self,
        root: Path | None = None,
        *,
        refresh_seconds: float = REFRESH_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.root = root
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self.infos: list[RunInfo] = []
        self.servers: list[ServerInfo] = []
        self.refreshes = 0
        self._timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(placeholder="filter runs: id, status, model, method", id="runs-filter")
        yield Static("Reading the runs…", id="runs-status")
        yield RunsTable(id="runs-table")
        yield Static("", id="servers-title")
        yield ServersTable(id="servers-table")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "ftui"
        self.sub_title = "runs"
        self.query_one("#runs-filter", Input).display = False
        self.query_one("#servers-title").display = False
        self.query_one(ServersTable).display = False
        self.query_one(RunsTable).focus()
        self.poll()

    # -- refresh ---------------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="runs")
    def poll(self) -> None:
        """List the runs off the UI thread; the next poll is armed when this one is shown."""
        worker = get_current_worker()
        try:
            infos, error = list_runs(self.root), None
        except Exception as exc:  # a broken run dir must never kill the screen
            infos, error = [], f"cannot list the runs: {exc}"
        try:
            servers = shown_servers(list_servers(self.root))
        except Exception:  # a broken server record must not hide the runs
            servers = []
        if not worker.is_cancelled:
            self.post_message(RunsUpdated(infos, error, servers))

    def on_runs_updated(self, message: RunsUpdated) -> None:
        self.refreshes += 1
        self.infos = message.infos
        self.servers = message.servers
        self._show(message.error)
        self._show_servers()
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        if self.is_current:  # hidden (another mode): stop polling until it shows again
            self._timer = self.set_timer(self.refresh_seconds, self.poll)

    def on_screen_resume(self) -> None:
        if self.refreshes and self._timer is None:
            self.poll()

    def _show(self, error: str | None = None) -> None:
        text = self.query_one("#runs-filter", Input).value
        shown = [info for info in self.infos if matches(info, text)]
        self.query_one(RunsTable).show(shown, self.clock())
        status = self.query_one("#runs-status", Static)
        if error:
            status.update(f"[b]{error}[/b]")
        elif not self.infos:
            status.update(
                "No runs yet: plan and launch one in the plan wizard, or try `ftui demo`."
            )
        else:
            running = sum(1 for i in self.infos if i.status in ("starting", "running", "stopping"))
            line = f"{len(self.infos)} run(s), {running} active"
            if text.strip():
                line += f" · showing {len(shown)} matching “{text.strip()}” (esc clears)"
            status.update(line)
        status.set_class(bool(error), "-error")

    def _show_servers(self) -> None:
        """The servers section: shown while a run is being served."""
        title = self.query_one("#servers-title", Static)
        table = self.query_one(ServersTable)
        title.display = table.display = bool(self.servers)
        if self.servers:
            title.update(f"Servers ({len(self.servers)}): ftui serve, stop with "
                         "ftui stop RUN --server")  # fmt: skip
            table.show(self.servers, self.clock())

    def action_refresh(self) -> None:
        self.poll()

    # -- filter ----------------------------------------------------------------------------------
    def action_filter(self) -> None:
        box = self.query_one("#runs-filter", Input)
        box.display = True
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#runs-filter", Input)
        if not box.display:
            return
        box.value = ""
        box.display = False
        self._show()
        self.query_one(RunsTable).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "runs-filter":
            self._show()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "runs-filter":
            self.query_one(RunsTable).focus()

    # -- marking and comparing ---------------------------------------------------------------------
    def action_mark(self) -> None:
        table = self.query_one(RunsTable)
        run_id = table.selected_run_id
        if run_id is not None:
            table.toggle_mark(run_id)
            table.action_cursor_down()  # mark the next one with the next press

    def action_compare(self) -> None:
        marked = [r for r in self.query_one(RunsTable).marked if r in self.infos_by_id]
        if len(marked) < 2:
            self.notify(
                "Mark two runs or more with space, then press c to compare them.",
                severity="warning",
                markup=False,
            )
            return
        self.post_message(OpenCompare(marked))

    @property
    def infos_by_id(self) -> dict[str, RunInfo]:
        return {info.run_id: info for info in self.infos}

    # -- actions ---------------------------------------------------------------------------------
    def _selected(self) -> RunInfo | None:
        table = self.query_one(RunsTable)
        run_id = table.selected_run_id
        if run_id is None:
            self.notify("No run selected.", severity="warning", markup=False)
            return None
        return table.infos.get(run_id)

    def _run_dir(self, info: RunInfo) -> RunDir:
        return RunDir(Path(info.path))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value is not None:
            self.post_message(OpenDashboard(str(event.row_key.value)))

    def action_open(self) -> None:
        info = self._selected()
        if info is not None:
            self.post_message(OpenDashboard(info.run_id))

    def action_stop(self) -> None:
        info = self._selected()
        if info is None:
            return
        if info.status in FINAL:
            self.notify(f"{info.run_id} is already {info.label}.", severity="warning", markup=False)
            return

        def chosen(how: str | None) -> None:
            if how:
                self._stop_worker(info, now=how == "now")

        self.app.push_screen(StopRunScreen(info.run_id), chosen)

    @work(thread=True, group="run-action")
    def _stop_worker(self, info: RunInfo, *, now: bool) -> None:
        self._engine_call(lambda: stop(self._run_dir(info), now=now), info.run_id)

    def action_save_now(self) -> None:
        info = self._selected()
        if info is not None:
            self._save_worker(info)

    @work(thread=True, group="run-action")
    def _save_worker(self, info: RunInfo) -> None:
        def call() -> str:
            save_now(self._run_dir(info))
            return "requested a checkpoint at the end of this step"

        self._engine_call(call, info.run_id)

    def action_resume(self) -> None:
        info = self._selected()
        if info is None:
            return
        if info.status not in ("stopped", "failed"):
            self.notify(
                f"{info.run_id} is {info.label}: only a stopped or failed run resumes.",
                severity="warning",
                markup=False,
            )
            return
        self._resume_worker(info)

    @work(thread=True, group="run-action")
    def _resume_worker(self, info: RunInfo) -> None:
        self._engine_call(lambda: f"resuming from {resume(self._run_dir(info))}", info.run_id)

    def _engine_call(self, call: Callable[[], str], run_id: str) -> None:
        """Run an engine call (in a worker thread) and report its outcome by message; the
        handler refreshes the list."""
        try:
            text = call()
        except FtuiError as error:
            self.post_message(RunActionDone(str(error), severity="error"))
        except Exception as exc:
            self.post_message(RunActionDone(f"{run_id}: {exc}", severity="error"))
        else:
            self.post_message(RunActionDone(f"{run_id}: {text}"))

    def on_run_action_done(self, message: RunActionDone) -> None:
        timeout = 10 if message.severity == "error" else 5
        self.notify(message.text, severity=message.severity, timeout=timeout, markup=False)
        self.poll()

    def action_delete(self) -> None:
        info = self._selected()
        if info is None:
            return
        if info.status not in FINAL:
            self._refuse_live(info.run_id, info.label)
            return
        self._deletion_worker(info)

    def _refuse_live(self, run_id: str, status: str) -> None:
        self.notify(f"{run_id} is {status}: stop it (x) before deleting it.", severity="error",
                    markup=False)  # fmt: skip

    @work(thread=True, exclusive=True, group="run-delete")
    def _deletion_worker(self, info: RunInfo) -> None:
        try:
            details = deletion_info(self._run_dir(info))
        except Exception as exc:
            self.post_message(RunActionDone(f"{info.run_id}: {exc}", severity="error"))
            return
        self.post_message(DeletionReady(details))

    def on_deletion_ready(self, message: DeletionReady) -> None:
        details = message.info
        if details.status not in FINAL:  # it started again since the key was pressed
            self._refuse_live(details.run_id, details.status)
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self._delete_worker(details)

        self.app.push_screen(DeleteRunScreen(details), confirmed)

    @work(thread=True, group="run-action")
    def _delete_worker(self, details: DeletionInfo) -> None:
        def call() -> str:
            delete_run(RunDir(Path(details.path)))
            return "deleted"

        self._engine_call(call, details.run_id)
