"""The Textual app. It wires screens, bindings and theme; screens do the work."""

from __future__ import annotations

from textual.app import App
from textual.binding import Binding
from textual.screen import Screen

from engine.hardware import NvmlBackend
from tui.screens.machine import MachineScreen


class FtuiApp(App[None]):
    CSS_PATH = "ftui.tcss"
    TITLE = "ftui"
    BINDINGS = [Binding("q", "quit", "Quit")]

    def __init__(self, backend: NvmlBackend, refresh_seconds: float = 1.0) -> None:
        super().__init__()
        self.backend = backend
        self.refresh_seconds = refresh_seconds

    def get_default_screen(self) -> Screen[None]:
        return MachineScreen(self.backend, self.refresh_seconds)
