"""The launch's run options beside the setup: the tracker (`--report-to`) and, for a preference
stage, beta, the loss type and the run to start from (`--beta`, `--loss-type`, `--from-run`).
Checked by the run spec's own rules (engine/run/spec.py), so a bad value reads as the CLI's."""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Grid, Vertical
from textual.message import Message
from textual.widgets import Input, Label, Select, Static

from engine.errors import FtuiError
from engine.run.spec import DEFAULT_BETA, LOSS_TYPES, REPORT_TO, SpecError, field_label
from engine.training_config import PREFERENCE_STAGES


@dataclass(frozen=True)
class RunOptions:
    report_to: str = "none"
    beta: float | None = None  # None: the stage's default
    loss_type: str = "auto"
    from_run: str | None = None

    def flags(self, stage: str) -> list[str]:
        """The `ftui launch` flags that give these options (none for the defaults)."""
        argv: list[str] = []
        if self.report_to != "none":
            argv += ["--report-to", self.report_to]
        if stage in PREFERENCE_STAGES:
            if self.beta is not None:
                argv += ["--beta", f"{self.beta:g}"]
            if self.loss_type != "auto":
                argv += ["--loss-type", self.loss_type]
        if self.from_run:
            argv += ["--from-run", self.from_run]
        return argv


def parse_options(
    report_to: str, beta: str, loss_type: str, from_run: str, stage: str
) -> RunOptions:
    """RunOptions from the fields (empty beta/loss type: the stage's defaults); raises SpecError
    naming the flag."""

    def bad(name: str, problem: str, fix: str) -> SpecError:
        return SpecError(f"spec field {field_label(name)}: {problem}", fix)

    value: float | None = None
    if beta.strip():
        try:
            value = float(beta)
        except ValueError:
            raise bad("preference.beta", f"{beta.strip()!r} is not a number", "e.g. 0.1") from None
        if not (math.isfinite(value) and value > 0):
            raise bad("preference.beta", f"{value:g} is not a positive number", "e.g. 0.1")
    loss = loss_type.strip() or "auto"
    if stage in PREFERENCE_STAGES and loss != "auto" and loss not in LOSS_TYPES[stage]:
        raise bad(
            "preference.loss_type",
            f"{loss!r} is not a loss of {stage}",
            f"one of {', '.join(LOSS_TYPES[stage])}, or auto",
        )
    return RunOptions(report_to, value, loss, from_run.strip() or None)


class OptionsPanel(Vertical):
    """Posts `OptionsPanel.Changed` when the user edits an option. Beta and the loss type show
    only for a preference stage (`show_stage`)."""

    class Changed(Message):
        pass

    def compose(self) -> ComposeResult:
        with Grid(classes="budget-grid"):
            yield Label("tracker", classes="knob-label")
            yield Select(
                [(r, r) for r in REPORT_TO],
                value="none",
                allow_blank=False,
                id="option-report-to",
                compact=True,
            )
            yield Label("from run", classes="knob-label")
            yield Input(id="option-from-run", placeholder="an ftui run", compact=True)
            yield Label("beta", classes="knob-label preference-option")
            yield Input(id="option-beta", compact=True, classes="preference-option")
            yield Label("loss type", classes="knob-label preference-option")
            yield Input(id="option-loss-type", compact=True, classes="preference-option")
        yield Static("", id="option-error")

    def on_mount(self) -> None:
        self.show_stage("sft")

    def show_stage(self, stage: str) -> None:
        preference = stage in PREFERENCE_STAGES
        for widget in self.query(".preference-option"):
            widget.display = preference
        if preference:
            self.query_one("#option-beta", Input).placeholder = f"{DEFAULT_BETA[stage]:g}"
            self.query_one("#option-loss-type", Input).placeholder = (
                f"auto ({LOSS_TYPES[stage][0]}; or {', '.join(LOSS_TYPES[stage][1:])})"
                if len(LOSS_TYPES[stage]) > 1
                else f"auto ({LOSS_TYPES[stage][0]})"
            )

    def read(self, stage: str) -> RunOptions:
        """The options as typed; raises SpecError (shown by `show_error`)."""
        return parse_options(
            str(self.query_one("#option-report-to", Select).value),
            self.query_one("#option-beta", Input).value,
            self.query_one("#option-loss-type", Input).value,
            self.query_one("#option-from-run", Input).value,
            stage,
        )

    def show_error(self, error: FtuiError | None) -> None:
        box = self.query_one("#option-error", Static)
        box.display = error is not None
        box.update("" if error is None else Text(error.message + f"\nfix: {error.fix}"))

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.Changed())

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        self.post_message(self.Changed())
