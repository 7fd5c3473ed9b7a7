"""Every knob of a setup, editable; `read()` turns the fields into a validated TrainingConfig
(or raises the engine's ConfigError, shown inline)."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Grid, Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, Input, Label, Select, Static

from engine.errors import FtuiError
from engine.models import ModelArch
from engine.training_config import (
    ALL_LINEAR,
    ATTENTIONS,
    DTYPES,
    METHODS,
    OFFLOADS,
    OPTIMIZERS,
    SHARDINGS,
    STAGES,
    ConfigError,
    TrainingConfig,
)

# auto: the planner picks among full / LoRA / QLoRA; the rest of the PEFT family when asked.
METHOD_CHOICES = ("auto", *METHODS)
INT_KNOBS = ("batch", "grad_accum", "seq_len", "rank", "alpha")
SELECT_KNOBS: dict[str, tuple[str, ...]] = {
    "grad_ckpt": ("on", "off"),
    "attn": ATTENTIONS,
    "dtype": DTYPES,
    "optim": OPTIMIZERS,
    "sharding": SHARDINGS,
    "offload": OFFLOADS,
}
LABELS = {
    "stage": "stage",
    "method": "method",
    "batch": "micro-batch",
    "grad_accum": "grad accum",
    "seq_len": "seq len",
    "rank": "LoRA rank",
    "alpha": "LoRA alpha",
    "targets": "targets",
    "grad_ckpt": "grad ckpt",
    "attn": "attention",
    "dtype": "dtype",
    "optim": "optimizer",
    "sharding": "sharding",
    "offload": "offload",
    "epochs": "epochs",
}
# Grid order (two knobs per row); targets gets a row of its own.
LAYOUT = (
    "stage", "method", "epochs", "batch", "grad_accum", "seq_len", "grad_ckpt", "rank", "alpha",
    "dtype", "attn", "optim", "sharding", "offload",
)  # fmt: skip


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_seq_len(arch: ModelArch, seq_len: int) -> None:
    """The CLI's rule: no sequence beyond the model's trained context."""
    max_pos = arch.max_positions
    if max_pos is not None and seq_len > max_pos:
        raise ConfigError(
            f"--seq-len {seq_len} is beyond {arch.name}'s max_position_embeddings ({max_pos})",
            f"use a seq len of {max_pos} or less",
        )


def parse_int(name: str, text: str) -> int:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        raise ConfigError(
            f"{_flag(name)} needs a whole number (got {text!r})"
            if text
            else f"{_flag(name)} is empty",
            f"type a number for {LABELS[name]}",
        ) from None


def parse_epochs(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ConfigError(
            f"--epochs needs a number (got {text.strip()!r})", "e.g. 1, 3 or 0.5"
        ) from None
    if not value > 0:
        raise ConfigError("--epochs must be positive", "e.g. 1, 3 or 0.5")
    return value


def parse_targets(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


class KnobsPanel(Vertical):
    """Posts `KnobsPanel.Edited(name)` when the user changes a knob (not when `show` fills
    them), and `KnobsPanel.MethodChosen` for the stage or the method, which drive the
    recommendation."""

    class Edited(Message):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

    class MethodChosen(Message):
        def __init__(self, method: str) -> None:
            super().__init__()
            self.method = method

    def _widget(self, name: str) -> Input | Select[str]:
        if name == "stage":
            return Select(
                [(s, s) for s in STAGES],
                value="sft",
                allow_blank=False,
                id="knob-stage",
                compact=True,
            )
        if name == "method":
            return Select(
                [(m, m) for m in METHOD_CHOICES],
                value="auto",
                allow_blank=False,
                id="knob-method",
                compact=True,
            )
        if name in SELECT_KNOBS:
            return Select(
                [(v, v) for v in SELECT_KNOBS[name]],
                allow_blank=False,
                id=f"knob-{name}",
                compact=True,
            )
        if name == "epochs":
            return Input(id="knob-epochs", type="number", compact=True)
        return Input(id=f"knob-{name}", type="integer", compact=True)

    def compose(self) -> ComposeResult:
        with Grid(classes="knobs-grid"):
            for name in LAYOUT:
                yield Label(LABELS[name], classes="knob-label")
                yield self._widget(name)
            if len(LAYOUT) % 2:
                yield Static("", classes="knob-filler")
            yield Label(LABELS["targets"], classes="knob-label")
            yield Input(
                id="knob-targets",
                placeholder=f"{ALL_LINEAR} or e.g. q_proj,v_proj",
                compact=True,
            )
        yield Static("", id="knob-error")
        yield Static("", id="knob-pins")
        with Horizontal(id="knob-buttons"):
            yield Button("Recommend (ctrl+r)", id="knob-replan", compact=True)
            yield Button("Unpin all", id="knob-unpin", compact=True)

    # -- values ----------------------------------------------------------------------------------
    def _input(self, name: str) -> Input:
        return self.query_one(f"#knob-{name}", Input)

    def _select(self, name: str) -> Select[str]:
        return self.query_one(f"#knob-{name}", Select)

    @property
    def method(self) -> str:
        return str(self._select("method").value)

    @property
    def stage(self) -> str:
        return str(self._select("stage").value)

    def set_method(self, method: str) -> None:
        with self.prevent(Select.Changed):
            self._select("method").value = method

    def show(self, config: TrainingConfig, epochs: float) -> None:
        """Fill every field from `config` without reporting edits."""
        with self.prevent(Input.Changed, Select.Changed):
            for name in INT_KNOBS:
                self._input(name).value = str(getattr(config, name))
            self._input("epochs").value = f"{epochs:g}"
            self._input("targets").value = ",".join(config.targets)
            self._select("grad_ckpt").value = "on" if config.grad_ckpt else "off"
            self._select("stage").value = config.stage
            for name in ("attn", "dtype", "optim", "sharding", "offload"):
                self._select(name).value = getattr(config, name)
        self.show_error(None)

    def read(self, base: TrainingConfig) -> tuple[TrainingConfig, float]:
        """(config, epochs) from the fields, validated; raises ConfigError naming the knob."""
        values: dict[str, Any] = {
            name: parse_int(name, self._input(name).value) for name in INT_KNOBS
        }
        values["targets"] = parse_targets(self._input("targets").value)
        values["grad_ckpt"] = self._select("grad_ckpt").value == "on"
        values["stage"] = self.stage
        for name in ("attn", "dtype", "optim", "sharding", "offload"):
            values[name] = str(self._select(name).value)
        epochs = parse_epochs(self._input("epochs").value)
        return base.with_changes(**values).validate(), epochs

    def show_error(self, error: FtuiError | None) -> None:
        box = self.query_one("#knob-error", Static)
        if error is None:
            box.update("")
            box.display = False
            return
        box.display = True
        text = error.message + (f"\nfix: {error.fix}" if error.fix else "")
        box.update(Text(text))

    def show_pins(self, pinned: dict[str, Any]) -> None:
        names = [LABELS.get(k, k) for k in pinned if k != "num_gpus"]
        box = self.query_one("#knob-pins", Static)
        box.display = bool(names)
        box.update(Text(f"pinned for the next recommendation: {', '.join(names)}", style="dim"))

    # -- events ----------------------------------------------------------------------------------
    def _name_of(self, widget_id: str | None) -> str | None:
        if widget_id and widget_id.startswith("knob-"):
            return widget_id[len("knob-") :]
        return None

    def on_input_changed(self, event: Input.Changed) -> None:
        name = self._name_of(event.input.id)
        if name:
            event.stop()
            self.post_message(self.Edited(name))

    def on_select_changed(self, event: Select.Changed) -> None:
        name = self._name_of(event.select.id)
        if not name:
            return
        event.stop()
        if name in ("stage", "method"):
            self.post_message(self.MethodChosen(str(event.value)))
        else:
            self.post_message(self.Edited(name))
