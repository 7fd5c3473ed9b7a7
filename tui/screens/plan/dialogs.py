"""The plan wizard's dialog: save the run spec to a file the user names (an existing file is
only replaced after the user says so)."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static


class SaveSpecScreen(ModalScreen[tuple[Path, bool] | None]):
    """Returns (path, overwrite) or None. `overwrite` is True only after the user confirmed
    replacing the existing file at `path`."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, default: str) -> None:
        super().__init__()
        self.default = default
        self.asked: Path | None = None

    def compose(self) -> ComposeResult:
        with Vertical(classes="plan-dialog"):
            yield Label("Save the run spec (YAML) as:")
            yield Input(self.default, id="save-path")
            yield Static("", id="save-warning")
            with Horizontal(classes="plan-dialog-buttons"):
                yield Button("Save", id="save-ok", variant="primary")
                yield Button("Overwrite", id="save-overwrite", variant="error")
                yield Button("Cancel", id="save-cancel")

    def on_mount(self) -> None:
        self.query_one("#save-overwrite", Button).display = False
        self.query_one("#save-path", Input).focus()

    def _warn(self, text: str) -> None:
        self.query_one("#save-warning", Static).update(Text(text))

    def _try_save(self) -> None:
        text = self.query_one("#save-path", Input).value.strip()
        if not text:
            self._warn("Type a file name, e.g. my-run.yaml")
            return
        path = Path(text).expanduser()
        if path.is_dir():
            self._warn(f"{path} is a folder: type a file name inside it")
            return
        if not path.parent.is_dir():
            self._warn(f"the folder {path.parent} does not exist")
            return
        if path.exists():
            self.asked = path
            self._warn(f"{path} already exists. Overwrite it?")
            button = self.query_one("#save-overwrite", Button)
            button.display = True
            button.focus()
            return
        self.dismiss((path, False))

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        if self.asked is not None:
            self.asked = None
            self.query_one("#save-overwrite", Button).display = False
            self._warn("")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._try_save()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "save-ok":
            self._try_save()
        elif event.button.id == "save-overwrite" and self.asked is not None:
            self.dismiss((self.asked, True))
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)
