"""The help screen: every key binding of the app and of the screen underneath."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

ABOUT = (
    "ftui plans, launches and watches LLM fine-tunes. Runs keep going when you close this "
    "app or your SSH session drops; come back with `ftui` (or `ftui attach RUN`)."
)


def _rows(bindings: list[BindingType]) -> list[tuple[str, str]]:
    rows = []
    for binding in bindings:
        if isinstance(binding, Binding):
            if binding.description:
                rows.append((binding.key_display or binding.key, binding.description))
        elif isinstance(binding, tuple) and len(binding) >= 3:
            rows.append((str(binding[0]), str(binding[2])))
    return rows


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close help")]

    def __init__(self, underneath: Screen[object] | None = None) -> None:
        super().__init__()
        self.underneath = underneath

    def compose(self) -> ComposeResult:
        app_rows = _rows(list(self.app.BINDINGS))
        screen_rows = _rows(list(self.underneath.BINDINGS)) if self.underneath else []
        lines = [f"[b]ftui help[/b]\n{ABOUT}\n", "[b]Everywhere[/b]"]
        lines += [f"  [b]{key:<10}[/b] {text}" for key, text in app_rows]
        if screen_rows:
            name = type(self.underneath).__name__.removesuffix("Screen")
            lines += ["", f"[b]On this screen ({name})[/b]"]
            lines += [f"  [b]{key:<10}[/b] {text}" for key, text in screen_rows]
        lines += ["", "[dim]Mouse works too. Press escape or ? to close.[/dim]"]
        with VerticalScroll(id="help-dialog"):
            yield Static("\n".join(lines), id="help-text")

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)
