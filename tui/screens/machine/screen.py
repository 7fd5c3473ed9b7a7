"""The machine view: every GPU as a panel, plus CPU/RAM/disk; refreshes about once a second.
After a run ends it says how long the GPUs have been idle, and what that costs at the run's
price (a rented box bills on)."""

from __future__ import annotations

import time

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from engine.humanize import duration
from engine.machine.hardware import MachineSnapshot, NvmlBackend, make_backend
from engine.run.cost import Idle, machine_idle, money
from tui.messages import MachineUpdated
from tui.screens.machine.gpu_panel import GpuPanel
from tui.screens.machine.host_panel import HostPanel
from tui.screens.machine.simulate import SimulateScreen

REFRESH_SECONDS = 1.0
IDLE_SECONDS = 10.0  # how often the runs are looked through for the idle line


def idle_text(idle: Idle | None, now: float) -> str:
    if idle is None:
        return ""
    seconds = max(0.0, now - idle.ended_at)
    text = f"GPUs idle for [b]{duration(seconds)}[/b] since run {idle.run_id} ended"
    if idle.usd_per_hour is not None:
        spent = seconds / 3600 * idle.usd_per_hour
        text += f" · at its {money(idle.usd_per_hour)}/h that is {money(spent)} so far"
    return text


class MachineScreen(Screen[None]):
    BINDINGS = [
        Binding("s", "simulate", "Simulate GPUs"),
        Binding("f5", "refresh", "Refresh"),
    ]

    def __init__(self, backend: NvmlBackend, refresh_seconds: float = REFRESH_SECONDS) -> None:
        super().__init__()
        self.backend = backend
        self.refresh_seconds = refresh_seconds
        self.snapshot: MachineSnapshot | None = None
        self.polls = 0
        self.idle: Idle | None = None  # written by the worker, shown by the UI thread
        self._idle_read = 0.0

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="machine"):
            yield Static("Reading the GPUs…", id="machine-status")
            yield Static("", id="machine-idle")
            yield VerticalScroll(id="gpus")
            yield HostPanel(id="host")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "ftui"
        self.poll()

    @work(thread=True, exclusive=True, group="nvml")
    def poll(self) -> None:
        """Read NVML off the UI thread; the next poll is armed once this one is handled."""
        snapshot = self.backend.snapshot()
        now = time.time()
        if now - self._idle_read >= IDLE_SECONDS:
            self._idle_read = now
            try:
                self.idle = machine_idle(host=snapshot.host.hostname)
            except OSError:
                self.idle = None
        self.post_message(MachineUpdated(snapshot))

    def on_machine_updated(self, message: MachineUpdated) -> None:
        self.polls += 1
        self.show(message.snapshot)
        self.set_timer(self.refresh_seconds, self.poll)

    def show(self, snapshot: MachineSnapshot) -> None:
        self.snapshot = snapshot
        status = self.query_one("#machine-status", Static)
        simulated = snapshot.backend == "simulated"
        self.sub_title = "simulated machine" if simulated else snapshot.host.hostname
        if snapshot.has_gpu:
            total = sum(g.memory_total_bytes for g in snapshot.gpus) / 1024**3
            text = (
                f"{len(snapshot.gpus)} GPU(s), {total:.0f} GiB in all · driver "
                f"{snapshot.driver_version} · CUDA {snapshot.cuda_driver_version}"
            )
            if simulated:
                text += " · [b]simulated[/b] from profiles: press [b]s[/b] to change"
            status.update(text)
            status.set_class(False, "-warning")
        else:
            status.update(
                f"[b]No GPU[/b]: {snapshot.no_gpu_reason}.\n"
                "ftui still plans: press [b]s[/b] to simulate a machine you could rent "
                "(for example h100x8), or run `ftui --simulate h100x8`."
            )
            status.set_class(True, "-warning")
        idle = self.query_one("#machine-idle", Static)
        idle.update(idle_text(self.idle, time.time()) if snapshot.has_gpu else "")
        idle.display = bool(snapshot.has_gpu and self.idle)
        self._show_gpus(snapshot)
        self.query_one(HostPanel).show(snapshot.host)

    def _show_gpus(self, snapshot: MachineSnapshot) -> None:
        container = self.query_one("#gpus", VerticalScroll)
        panels = list(container.query(GpuPanel))
        if [p.gpu.index for p in panels] != [g.index for g in snapshot.gpus]:
            container.remove_children()
            container.mount_all([GpuPanel(g) for g in snapshot.gpus])
            return
        for panel, gpu in zip(panels, snapshot.gpus, strict=True):
            panel.show(gpu)

    def action_refresh(self) -> None:
        self.poll()

    def action_simulate(self) -> None:
        def switch(spec: str | None) -> None:
            if spec:
                self.backend = make_backend(spec)
                self.poll()

        self.app.push_screen(SimulateScreen(), switch)
