"""The live dashboard of one run: progress, loss and learning rate, throughput, every GPU
against the plan, events and alerts, and the tail of the log. A preference run (DPO, ORPO,
KTO, SimPO) shows its rewards, chosen against rejected, and its reward margin and accuracy in
the learning rate's place; a pretrain run charts its perplexity.

Everything comes from the run directory, so it works for a running run (tailing), a
finished one (replay: read once, then only state.json is watched) and a run started from
another session. One thread worker (group `dash-tail`) reads the files and builds a
`DashFrame`; it posts one message per refresh and the next refresh is armed only once that
message was handled, so reads never stack up. Widgets are touched on the UI thread only.

When a run this screen watched live ends, fails or stalls, it rings the terminal bell and sends
an OSC 9 desktop notification (iTerm2, WezTerm, kitty, Windows Terminal...; other terminals
ignore it), for the user who is looking at another window.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Footer, Header, Label, Log, Static
from textual.worker import get_current_worker

from engine.errors import FtuiError
from engine.machine.hardware import NvmlBackend
from engine.monitor.alerts import Alert
from engine.monitor.reading import TextTail
from engine.monitor.store import MetricsStore
from engine.run.cost import Cost, run_cost
from engine.run.rundir import FINAL, RunDir, read_spec
from tui.screens.dashboard.events import EventList
from tui.screens.dashboard.gpu import DashGpuPanel
from tui.screens.dashboard.header import RunHeader, set_text
from tui.screens.dashboard.model import DashFrame, build_frame
from tui.widgets.chart import BrailleChart

RECONCILE_SECONDS = 5.0  # how often a live run's processes are checked (a dead run → failed)
COST_SECONDS = 5.0  # how often the cost is read again (events, spec and plan of the run)
TELL_KINDS = ("completed", "stopped", "failed", "died", "oom", "nan", "stall")
MAX_NOTIFY = 3  # alerts found in one refresh (a replayed history) beyond this are summarised


class OpenChat(Message):
    """Asks the app to open the chat with this run's model."""

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id


class DashboardRefreshed(Message):
    """One refresh: a new frame (None when no file changed), the new log lines."""

    def __init__(
        self,
        frame: DashFrame | None,
        last_step_age: float | None,
        log_reset: bool = False,
        log_lines: list[str] | None = None,
        error: str | None = None,
        cost: Cost | None = None,
    ) -> None:
        super().__init__()
        self.cost = cost
        self.frame = frame
        self.last_step_age = last_step_age
        self.log_reset = log_reset
        self.log_lines = log_lines or []
        self.error = error


class ControlDone(Message):
    """A stop or save-now request finished (with an error message when it failed)."""

    def __init__(self, text: str, error: bool) -> None:
        super().__init__()
        self.text = text
        self.error = error


class ConfirmStop(ModalScreen[bool]):
    BINDINGS = [
        Binding("y", "answer(True)", "Stop the run"),
        Binding("n,escape", "answer(False)", "Keep it running"),
    ]

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id

    def compose(self) -> ComposeResult:
        with Grid(id="dash-confirm"):
            yield Label(
                f"Stop [b]{self.run_id}[/b]?\nIt saves a checkpoint at the end of the current "
                "step, then exits. `ftui resume` continues it later.",
                id="dash-confirm-text",
            )
            yield Button("Stop (y)", variant="error", id="dash-confirm-yes")
            yield Button("Keep running (n)", variant="primary", id="dash-confirm-no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "dash-confirm-yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class DashboardScreen(Screen[None]):
    # Small terminals (80×24 over SSH): the charts get the room (see dashboard.tcss).
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (32, "-tall")]
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("x", "stop", "Stop run"),
        Binding("w", "save_now", "Save now"),
        Binding("c", "chat", "Chat"),
        Binding("l", "toggle_log", "Log"),
    ]

    def __init__(
        self,
        run: RunDir,
        *,
        backend: NvmlBackend | None = None,
        refresh_seconds: float = 1.0,
        stall_seconds: float = 300.0,
    ) -> None:
        super().__init__()
        self.run = run
        self.backend = backend
        self.refresh_seconds = refresh_seconds
        self.store = MetricsStore(run, stall_seconds=stall_seconds)  # the worker's only
        self.frame: DashFrame | None = None
        self.polls = 0
        self._log_tail = TextTail(run.stdout)
        self._gpu_names: dict[int, str] | None = None
        self._last_reconcile = 0.0
        self._chart_width = 80
        self._spark_width = 24
        self._built_for: tuple[int, int] | None = None  # the widths of the last frame
        self._measured: set[str] = set()  # what has been measured on screen yet
        self._error: str | None = None  # the last read error (notified once)
        self._on_cpu: bool | None = None  # from spec.yaml, read once by the worker
        self._cost: Cost | None = None  # the worker's last reading
        self._cost_read = 0.0
        self._cost_status: str | None = None
        self._seen_live = False  # ring the bell only for a run watched while it ran

    def compose(self) -> ComposeResult:
        yield Header()
        yield RunHeader(id="dash-head")
        with Horizontal(id="dash-body"):
            with Vertical(id="dash-charts"):
                with Horizontal(id="dash-main-charts"):  # a preference run's rewards beside
                    yield BrailleChart(id="dash-loss")
                    yield BrailleChart(id="dash-rewards")
                with Horizontal(id="dash-small-charts"):  # side by side: each keeps its height
                    yield BrailleChart(id="dash-lr")
                    yield BrailleChart(id="dash-ppl")
                    yield BrailleChart(id="dash-margin")
            with VerticalScroll(id="dash-gpus"):
                yield Static("", id="dash-gpu-note")
        with Horizontal(id="dash-bottom"):
            yield EventList(id="dash-events")
            yield Log(max_lines=500, highlight=False, id="dash-log")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "ftui"
        self.sub_title = f"run {self.run.run_id}"
        self._header = self.query_one(RunHeader)
        self._loss = self.query_one("#dash-loss", BrailleChart)
        self._lr = self.query_one("#dash-lr", BrailleChart)
        self._ppl = self.query_one("#dash-ppl", BrailleChart)
        self._ppl.display = False  # shown once the run has evaluated (pretrain: at once)
        self._rewards = self.query_one("#dash-rewards", BrailleChart)
        self._margin = self.query_one("#dash-margin", BrailleChart)
        self._rewards.display = self._margin.display = False  # preference runs only
        self._events = self.query_one("#dash-events", EventList)
        self._log = self.query_one("#dash-log", Log)
        self._gpu_box = self.query_one("#dash-gpus", VerticalScroll)
        self._gpu_note = self.query_one("#dash-gpu-note", Static)
        self._loss.border_title = "loss"
        self._loss.border_subtitle = "⠂ train  ⠉ smoothed  ◆ eval"
        self._lr.border_title = "learning rate"
        self._ppl.border_title = "eval perplexity"
        self._rewards.border_title = "rewards"
        self._rewards.border_subtitle = "[$success]chosen[/] [$error]rejected[/]"
        self._margin.border_title = "reward margin"
        self._events.border_title = "events"
        self._log.border_title = "stdout.log"
        self._gpu_box.border_title = "GPUs"
        self.poll()

    # -- the refresh loop ------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="dash-tail")
    def poll(self) -> None:
        """Read the run directory off the UI thread; the next poll is armed once handled."""
        worker = get_current_worker()
        try:
            message = self._read()
        except Exception as exc:  # an unreadable file must not take the app down: say so, retry
            message = DashboardRefreshed(None, None, error=f"cannot read the run: {exc}")
        if not worker.is_cancelled:
            self.post_message(message)

    def _read(self) -> DashboardRefreshed:
        now = time.time()
        store = self.store
        if store.status not in FINAL and now - self._last_reconcile >= RECONCILE_SECONDS:
            self._last_reconcile = now
            self._reconcile()
        result = store.refresh(now)
        if self._gpu_names is None:
            self._gpu_names = self._read_gpu_names()
        if self._on_cpu is None:
            self._on_cpu = read_spec(self.run).get("device") == "cpu"
        log_reset, log_lines = self._log_tail.read()
        frame = None
        widths = (self._chart_width, self._spark_width)  # set on the UI thread: ints
        if result.changed or widths != self._built_for:
            self._built_for = widths
            frame = build_frame(
                store,
                now=now,
                alerts=result.alerts,
                chart_width=widths[0],
                spark_width=widths[1],
                gpu_names=self._gpu_names,
            )
        since = store.last_progress_t()
        age = now - since if since is not None and store.status not in FINAL else None
        if now - self._cost_read >= COST_SECONDS or store.status != self._cost_status:
            self._cost_read, self._cost_status = now, store.status
            eta = store.progress().eta_seconds if store.status not in FINAL else 0.0
            self._cost = run_cost(self.run, store.state, now=now, remaining_s=eta)
        return DashboardRefreshed(frame, age, log_reset, log_lines, cost=self._cost)

    def _reconcile(self) -> None:
        """A run whose supervisor died without a word is recorded as failed (killed)."""
        from engine.run.operations import reconcile

        # A run directory we cannot write: show what the files say.
        with contextlib.suppress(OSError, ValueError, FtuiError):
            reconcile(self.run)

    def _read_gpu_names(self) -> dict[int, str]:
        """GPU names from NVML when the run is on this machine (gpu.jsonl has only indexes)."""
        if self.backend is None:
            return {}
        import socket

        host = self.store.state.get("host")
        if host and host != socket.gethostname():
            return {}
        try:
            snapshot = self.backend.snapshot()
        except Exception:  # NVML trouble must never take the dashboard down
            return {}
        return {gpu.index: gpu.name.removeprefix("NVIDIA ") for gpu in snapshot.gpus}

    def on_dashboard_refreshed(self, message: DashboardRefreshed) -> None:
        self.polls += 1
        try:
            if message.error and message.error != self._error:
                self.notify(message.error, severity="error")
            self._error = message.error
            cost_changed = self._header.cost != message.cost
            self._header.cost = message.cost
            if message.frame is None and self.frame is not None and cost_changed:
                self._header.show_age(self.frame)  # the progress row carries the cost
            if message.frame is not None:
                self.show(message.frame)
            elif self.frame is not None and self.frame.last_step_age != message.last_step_age:
                self.frame = replace(self.frame, last_step_age=message.last_step_age)
                self._header.show_age(self.frame)
            if message.log_reset:
                self._log.clear()
            if message.log_lines:
                self._log.write_lines(message.log_lines)
            self._measure()  # a changed size rebuilds the next frame
        finally:
            self.set_timer(self.refresh_seconds, self.poll)

    def show(self, frame: DashFrame) -> None:
        self.frame = frame
        self._seen_live = self._seen_live or frame.status not in FINAL
        self.set_class(frame.stalled, "-stalled")
        self._header.on_cpu = bool(self._on_cpu)
        self._header.show(frame)
        self._loss.show(frame.loss_chart)
        self._lr.show(frame.lr_chart)
        self._show_stage(frame)
        self._show_gpus(frame)
        self._events.show(frame.events)
        self._notify(frame.alerts)

    def _show_stage(self, frame: DashFrame) -> None:
        """What the stage adds: a preference run's rewards and margin take the learning
        rate's place (its value stays in the metrics row); pretrain charts its perplexity."""
        self.set_class(frame.preference, "-preference")
        self._rewards.display = self._margin.display = frame.preference
        self._lr.display = not frame.preference
        if frame.preference:
            self._rewards.show(frame.rewards_chart)
            self._margin.show(frame.margin_chart)
            accuracy = "–" if frame.accuracy is None else f"{frame.accuracy:.2f}"
            self._margin.border_subtitle = f"accuracy {accuracy}"
        pretrain = frame.stage == "pretrain"
        self._ppl.border_title = "perplexity" if pretrain else "eval perplexity"
        self._ppl.border_subtitle = "⠉ train  ◆ eval" if pretrain else ""
        self._ppl.display = bool(frame.perplexity_chart.layers) and not frame.preference
        self._ppl.show(frame.perplexity_chart)

    def _measure(self) -> None:
        """Chart and sparkline widths for the next frame's downsampling (read by the worker):
        measured after every refresh, so a resized terminal gets a new frame."""
        if self._loss.content_size.width:
            self._chart_width = max(10, self._loss.content_size.width - 8)
            self._measured.add("charts")
        sparks = self._gpu_box.query(".dash-spark")
        if sparks and sparks.first().size.width:
            self._spark_width = sparks.first().size.width
            self._measured.add("sparks")

    @property
    def settled(self) -> bool:
        """The frame on screen was built for the measured widget sizes (tests, benchmarks)."""
        frame = self.frame
        if frame is None or self._built_for != (self._chart_width, self._spark_width):
            return False
        return "charts" in self._measured and (not frame.gpus or "sparks" in self._measured)

    def _show_gpus(self, frame: DashFrame) -> None:
        container = self._gpu_box
        plan = ""
        if frame.plan_device_gib:
            plan = f"plan: {frame.plan_device_gib:.1f} GiB per GPU (nvidia-smi peak)"
            if frame.torch_peak_gib and frame.plan_allocated_gib:
                plan += (
                    f"\ntorch peak {frame.torch_peak_gib:.1f} GiB"
                    f" · plan {frame.plan_allocated_gib:.1f} allocated"
                )
        # A CPU run has no GPU to show: the charts take the room.
        container.display = bool(frame.gpus) or not self._on_cpu
        container.set_class(not frame.gpus, "-empty")
        if not frame.gpus:
            plan = (
                "[b]No GPU data[/b] for this run: it ran without a GPU, or its sampler has not "
                "written gpu.jsonl yet." + (f"\n{plan}" if plan else "")
            )
        set_text(self._gpu_note, plan, layout=True)
        self._gpu_note.display = bool(plan)
        panels = list(container.query(DashGpuPanel))
        if [p.view.index for p in panels] != [g.index for g in frame.gpus]:
            for panel in panels:
                panel.remove()
            container.mount_all([DashGpuPanel(view) for view in frame.gpus])
            return
        for panel, view in zip(panels, frame.gpus, strict=True):
            panel.show(view)

    def _notify(self, alerts: list[Alert]) -> None:
        shown = alerts[-MAX_NOTIFY:]
        if len(alerts) > len(shown):
            self.notify(
                f"{len(alerts) - len(shown)} earlier alerts are in the events list",
                severity="warning",
            )
        for alert in shown:
            title = {"stall": "stalled", "nan": "NaN loss", "oom": "out of memory"}.get(
                alert.kind, alert.kind
            )
            self.notify(alert.message, title=title, severity=alert.severity)  # type: ignore[arg-type]
        told = [a for a in alerts if a.kind in TELL_KINDS]
        if told and self._seen_live:
            self.tell_desktop(f"ftui {self.run.run_id}: {told[-1].message}")

    def tell_desktop(self, text: str) -> None:
        """The terminal bell, and an OSC 9 desktop notification. Textual has no public way to
        write an escape sequence; its own `bell()` writes through the driver, as this does."""
        self.app.bell()
        driver = getattr(self.app, "_driver", None)
        if driver is None or self.app.is_headless:
            return
        clean = "".join(c for c in text if c.isprintable())[:200]  # no ESC/BEL inside
        with contextlib.suppress(Exception):
            driver.write(f"\x1b]9;{clean}\x07")

    # -- actions ---------------------------------------------------------------------------------
    def action_back(self) -> None:
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()

    def action_chat(self) -> None:
        self.post_message(OpenChat(self.run.run_id))

    def action_toggle_log(self) -> None:
        self._log.toggle_class("-hidden")

    def action_stop(self) -> None:
        if self.frame is not None and self.frame.status in FINAL:
            self.notify(f"the run is already {self.frame.status}", severity="warning")
            return

        def answered(stop: bool | None) -> None:
            if stop:
                self.control("stop")

        self.app.push_screen(ConfirmStop(self.run.run_id), answered)

    def action_save_now(self) -> None:
        self.control("save-now")

    @work(thread=True, group="dash-control")
    def control(self, what: str) -> None:
        """`engine.run.operations.stop` / `save_now` write control/ files: off the UI thread."""
        from engine.run.operations import save_now, stop

        try:
            if what == "stop":
                text = stop(self.run)
            else:
                save_now(self.run)
                text = "save requested: the run saves a checkpoint after this step"
        except FtuiError as exc:
            self.post_message(ControlDone(f"{exc}", error=True))
        except OSError as exc:
            self.post_message(ControlDone(f"could not write to the run directory: {exc}", True))
        else:
            self.post_message(ControlDone(text, error=False))

    def on_control_done(self, message: ControlDone) -> None:
        self.notify(message.text, severity="error" if message.error else "information")
