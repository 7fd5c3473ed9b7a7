"""The generation settings dialog: temperature, top-p, max tokens, repetition penalty, seed,
system prompt. Dismisses with (settings, system prompt), or None when cancelled."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static, TextArea

from engine.chat import ChatError, GenerationSettings

FIELDS = (
    ("temperature", "Temperature (0: greedy)"),
    ("top_p", "Top-p"),
    ("max_new_tokens", "Max new tokens"),
    ("repetition_penalty", "Repetition penalty"),
    ("seed", "Seed (blank: random)"),
)
SettingsResult = tuple[GenerationSettings, str]


class ChatSettingsScreen(ModalScreen[SettingsResult | None]):
    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "apply", "Apply", priority=True),
    ]

    def __init__(self, settings: GenerationSettings, system: str) -> None:
        super().__init__()
        self.settings = settings
        self.system = system

    def compose(self) -> ComposeResult:
        with Vertical(id="chat-settings-dialog"):
            yield Label("[b]Generation settings[/b]")
            with Grid(id="chat-settings-grid"):
                for name, label in FIELDS:
                    value = getattr(self.settings, name)
                    yield Label(label)
                    yield Input("" if value is None else str(value), id=f"setting-{name}")
            yield Label("System prompt")
            yield TextArea(self.system, id="setting-system")
            yield Static("", id="chat-settings-error", markup=False)
            with Horizontal(id="chat-settings-buttons"):
                yield Button("Apply", variant="primary", id="chat-settings-apply")
                yield Button("Cancel", id="chat-settings-cancel")

    def read(self) -> SettingsResult:
        values: dict[str, object] = {}
        for name, label in FIELDS:
            text = self.query_one(f"#setting-{name}", Input).value.strip()
            try:
                if name == "seed":
                    values[name] = int(text) if text else None
                elif name == "max_new_tokens":
                    values[name] = int(text)
                else:
                    values[name] = float(text)
            except ValueError:
                raise ChatError(f"{label}: {text!r} is not a number", "type a number") from None
        settings = self.settings.with_changes(**values)
        return settings, self.query_one("#setting-system", TextArea).text

    def action_apply(self) -> None:
        try:
            result = self.read()
        except ChatError as error:
            self.query_one("#chat-settings-error", Static).update(str(error))
            return
        self.dismiss(result)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_input_submitted(self) -> None:
        self.action_apply()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "chat-settings-apply":
            self.action_apply()
        else:
            self.action_cancel()
