"""The Textual app. It wires screens (modes), bindings and stylesheets; screens do the work.

Modes: `machine` (the default), `plan` the plan wizard, `runs` the runs list. A run's
dashboard, chat and the compare screen are pushed on top of whichever mode opened them.

Keys: the app's letters (m, p, r, q, ?) work on the screens that show things. A screen where
the user types (`FORM = True`: the plan wizard) switches them off, so a letter typed there can
never leave the screen; there escape goes back to the machine view (modes keep their screens,
so nothing typed is lost) and f1 shows the help, keys nobody types into a path or a name.
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
    CSS_PATH = stylesheets("dashboard", "runs", "plan", "chat", "compare")
    TITLE = "ftui"
    BINDINGS = [
        Binding("m", "letter('show_mode', 'machine')", "Machine"),
        Binding("p", "letter('show_mode', 'plan')", "Plan"),
        Binding("r", "letter('show_mode', 'runs')", "Runs"),
        Binding("question_mark", "letter('help')", "Help", key_display="?"),
        Binding("q", "letter('quit')", "Quit"),
        Binding("f1", "help", "Help", show=False),
    ]

    def __init__(
        self,
        backend: NvmlBackend,
        refresh_seconds: float = 1.0,
        *,
        simulate: str | None = None,
        attach: str | None = None,
        chat: str | None = None,
        compare: list[str] | None = None,
        axis: str = "step",
    ) -> None:
        super().__init__()
        self.backend = backend
        self.refresh_seconds = refresh_seconds
        self.simulate = simulate
        self._attach = attach
        self._chat = chat
        self._compare = compare
        self._axis = axis
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
        elif self._compare:
            self.open_compare(self._compare, self._axis)

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

    def open_compare(self, run_refs: list[str], axis: str = "step") -> None:
        from engine.errors import FtuiError
        from engine.monitor.compare import check_runs
        from engine.run.rundir import find_run
        from tui.screens.compare.screen import CompareScreen

        try:
            runs = [find_run(ref) for ref in run_refs]
            check_runs(runs)
        except FtuiError as error:
            self.notify(str(error), severity="error", markup=False)
            return
        self.push_screen(CompareScreen(runs, axis=axis))

    # -- messages from screens ---------------------------------------------------------------------
    def on_open_dashboard(self, message: Any) -> None:
        self.open_dashboard(message.run_id)

    def on_open_compare(self, message: Any) -> None:
        self.open_compare(message.run_ids)

    def on_open_chat(self, message: Any) -> None:
        self.open_chat(message.run_id)

    # -- actions ---------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The app's letters are off on a screen where the user types (a form): hidden from
        the footer, and the key goes on to the focused widget."""
        return not (action == "letter" and getattr(self.screen, "FORM", False))

    async def action_letter(self, action: str, mode: str = "") -> None:
        """What an app-wide letter does (an action of its own, so check_action can switch the
        letters off without touching escape, f1 or ctrl+q)."""
        if action == "show_mode":
            await self.action_show_mode(mode)
        elif action == "help":
            self.action_help()
        elif action == "quit":
            await self.action_quit()

    async def action_show_mode(self, mode: str) -> None:
        if mode != self.current_mode:
            await self.switch_mode(mode)

    def action_help(self) -> None:
        from tui.screens.help import HelpScreen

        if isinstance(self.screen, HelpScreen):
            return
        self.push_screen(HelpScreen(self.screen))
