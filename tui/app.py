"""The Textual app. It wires screens (modes), bindings and stylesheets; screens do the work.

Modes: `machine` (the default), `plan` the plan wizard, `runs` the runs list. A run's
dashboard and chat are pushed on top of whichever mode opened them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.app import App
from textual.binding import Binding
from textual.screen import Screen

from engine.machine.hardware import NvmlBackend
from tui.screens.machine.screen import MachineScreen

_HERE = Path(__file__).parent


def stylesheets(*screens: str) -> list[str]:
    """The app's own stylesheet, then each named screen's, which lives beside the screen's code."""
    return [str(_HERE / "ftui.tcss")] + [
        str(_HERE / "screens" / name / f"{name}.tcss") for name in screens
    ]


class FtuiApp(App[None]):
    DEFAULT_MODE = "machine"
    CSS_PATH = stylesheets("dashboard", "runs", "plan", "chat")
    TITLE = "ftui"
    BINDINGS = [
        Binding("m", "show_mode('machine')", "Machine"),
        Binding("p", "show_mode('plan')", "Plan"),
        Binding("r", "show_mode('runs')", "Runs"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        backend: NvmlBackend,
        refresh_seconds: float = 1.0,
        *,
        simulate: str | None = None,
        attach: str | None = None,
        chat: str | None = None,
    ) -> None:
        super().__init__()
        self.backend = backend
        self.refresh_seconds = refresh_seconds
        self.simulate = simulate
        self._attach = attach
        self._chat = chat
        # The machine view is the default mode; registering it lets `m` switch back to it.
        self.add_mode("machine", self.get_default_screen)
        self.add_mode("plan", self._plan_screen)
        self.add_mode("runs", self._runs_screen)

    # -- screens ---------------------------------------------------------------------------------
    def get_default_screen(self) -> Screen[None]:
        return MachineScreen(self.backend, self.refresh_seconds)

    def _plan_screen(self) -> Screen[Any]:
        from tui.screens.plan.screen import PlanWizardScreen

        return PlanWizardScreen(self.backend, simulate=self.simulate)

    def _runs_screen(self) -> Screen[Any]:
        from tui.screens.runs.screen import RunsScreen

        return RunsScreen()

    def on_mount(self) -> None:
        if self._attach:
            self.open_dashboard(self._attach)
        elif self._chat:
            self.open_chat(self._chat)

    def open_dashboard(self, run_ref: str) -> None:
        from engine.errors import FtuiError
        from engine.run.rundir import find_run
        from tui.screens.dashboard.screen import DashboardScreen

        try:
            run = find_run(run_ref)
        except FtuiError as error:
            self.notify(error.message, severity="error")
            return
        self.push_screen(DashboardScreen(run, backend=self.backend))

    def open_chat(self, run_ref: str) -> None:
        from engine.errors import FtuiError
        from engine.run.rundir import find_run
        from tui.screens.chat.screen import ChatScreen

        try:
            run = find_run(run_ref)
        except FtuiError as error:
            self.notify(error.message, severity="error")
            return
        self.push_screen(ChatScreen(run))

    # -- messages from screens ---------------------------------------------------------------------
    def on_open_dashboard(self, message: Any) -> None:
        self.open_dashboard(message.run_id)

    def on_open_chat(self, message: Any) -> None:
        self.open_chat(message.run_id)

    # -- actions ---------------------------------------------------------------------------------
    async def action_show_mode(self, mode: str) -> None:
        if mode != self.current_mode:
            await self.switch_mode(mode)

    def action_help(self) -> None:
        from tui.screens.help import HelpScreen

        if isinstance(self.screen, HelpScreen):
            return
        self.push_screen(HelpScreen(self.screen))
