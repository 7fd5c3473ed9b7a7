"""The launch's budget caps: `ftui launch --max-cost USD --max-hours H`, optional, checked by
the run spec's own rule (engine/run/spec.py `Budget`), so a bad value reads as the CLI's."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Grid, Vertical
from textual.message import Message
from textual.widgets import Input, Label, Static

from engine.errors import FtuiError
from engine.run.spec import Budget, SpecError, field_label

CAPS = ("max_cost", "max_hours")


def parse_caps(texts: dict[str, str]) -> Budget:
    """A Budget from the two fields (empty: no cap); raises SpecError naming the flag."""

    def bad(name: str, problem: str, fix: str) -> SpecError:
        return SpecError(f"spec field {field_label(name)}: {problem}", fix)

    values: dict[str, float | str | None] = {}
    for name in CAPS:
        text = texts.get(name, "").strip()
        try:
            values[name] = float(text) if text else None
        except ValueError:
            values[name] = text  # Budget.validate says it is not a number
    budget = Budget(**values)  # type: ignore[arg-type]
    budget.validate(bad)
    return budget


class BudgetPanel(Vertical):
    """Posts `BudgetPanel.Changed` when the user edits a cap."""

    class Changed(Message):
        pass

    def compose(self) -> ComposeResult:
        with Grid(classes="budget-grid"):
            yield Label("max cost $", classes="knob-label")
            yield Input(id="budget-max-cost", placeholder="no cap", compact=True)
            yield Label("max hours", classes="knob-label")
            yield Input(id="budget-max-hours", placeholder="no cap", compact=True)
        yield Static(
            Text("the run stops with a checkpoint (resumable) at either cap", style="dim"),
            id="budget-note",
        )
        yield Static("", id="budget-error")

    def read(self) -> Budget:
        """The caps as typed; raises SpecError (shown by `show_error`)."""
        boxes = {name: self.query_one(f"#budget-{name.replace('_', '-')}", Input) for name in CAPS}
        return parse_caps({name: box.value for name, box in boxes.items()})

    def show_error(self, error: FtuiError | None) -> None:
        box = self.query_one("#budget-error", Static)
        box.display = error is not None
        if error is None:
            box.update("")
            return
        box.update(Text(error.message + (f"\nfix: {error.fix}" if error.fix else "")))

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.Changed())
