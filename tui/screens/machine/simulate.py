"""Ask for a simulate spec (`h100x8`) and check it before the machine view switches to it."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from engine.errors import SimulateSpecError
from engine.machine.fakenvml import parse_simulate_spec
from profiles import gpu_profiles


class SimulateScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        ids = ", ".join(p.id for p in gpu_profiles())
        with Vertical(id="simulate-dialog"):
            yield Label("Simulate a machine: a GPU id with an optional count")
            yield Input(placeholder="h100x8", id="simulate-spec")
            yield Static(f"[dim]{ids}[/dim]", id="simulate-ids")
            yield Static("", id="simulate-error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        spec = event.value.strip()
        try:
            parse_simulate_spec(spec)
        except SimulateSpecError as error:
            self.query_one("#simulate-error", Static).update(f"[red]{error.message}[/red]")
            return
        self.dismiss(spec)

    def action_cancel(self) -> None:
        self.dismiss(None)
