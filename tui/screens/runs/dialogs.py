"""Confirmation dialogs of the runs screen: stop a run, delete a run."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

CONFIRM_WORD = "delete"


@dataclass(frozen=True)
class DeletionInfo:
    """What deleting a run removes (gathered off the UI thread)."""

    run_id: str
    path: str
    status: str
    checkpoints: int
    has_final: bool
    size_bytes: int


def _size(n: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


class StopRunScreen(ModalScreen[str | None]):
    """Ask how to stop a run: 'stop' (checkpoint, then exit), 'now' (kill), or None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id

    def compose(self) -> ComposeResult:
        with Vertical(classes="runs-dialog"):
            yield Label(f"Stop run [b]{self.run_id}[/b]?")
            yield Static(
                "[b]Stop[/b] asks the trainer to save a checkpoint at the end of this step and "
                "exit; you can resume it later.\n[b]Kill now[/b] sends SIGTERM and then kills "
                "every process of the run: work since the last checkpoint is lost.",
                classes="runs-dialog-text",
            )
            with Horizontal(classes="runs-dialog-buttons"):
                yield Button("Stop", id="stop-graceful", variant="warning")
                yield Button("Kill now", id="stop-now", variant="error")
                yield Button("Cancel", id="stop-cancel")

    def on_mount(self) -> None:
        self.query_one("#stop-graceful", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        choice = {"stop-graceful": "stop", "stop-now": "now"}.get(event.button.id or "")
        self.dismiss(choice)

    def action_cancel(self) -> None:
        self.dismiss(None)


class DeleteRunScreen(ModalScreen[bool]):
    """Names the run and what goes with it; deletes only after the user types the word."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, info: DeletionInfo) -> None:
        super().__init__()
        self.info = info

    def compose(self) -> ComposeResult:
        info = self.info
        parts = [f"{info.checkpoints} checkpoint(s)"]
        if info.has_final:
            parts.append("the final model/adapter")
        parts.append("the spec, plan, metrics, events and logs")
        with Vertical(classes="runs-dialog"):
            yield Label(Text.assemble("Delete run ", (info.run_id, "bold"), f" ({info.status})?"))
            yield Static(
                Text.assemble(
                    "This deletes the folder ",
                    (info.path, "bold"),
                    f" and everything in it: {', '.join(parts)} ({_size(info.size_bytes)}). "
                    "It cannot be undone.",
                ),
                classes="runs-dialog-text",
            )
            yield Input(placeholder=f"type {CONFIRM_WORD} to confirm", id="delete-confirm")
            with Horizontal(classes="runs-dialog-buttons"):
                yield Button("Delete", id="delete-yes", variant="error", disabled=True)
                yield Button("Cancel", id="delete-cancel")

    def on_mount(self) -> None:
        self.query_one("#delete-confirm", Input).focus()

    def _confirmed(self) -> bool:
        return self.query_one("#delete-confirm", Input).value.strip().lower() == CONFIRM_WORD

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.query_one("#delete-yes", Button).disabled = not self._confirmed()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if self._confirmed():
            self.dismiss(True)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "delete-yes" and self._confirmed())

    def action_cancel(self) -> None:
        self.dismiss(False)
