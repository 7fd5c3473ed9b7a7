"""One GPU of a run: VRAM used against the plan's predicted peak, and utilisation, temperature
and power as sparklines over the last samples of gpu.jsonl."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Label, Sparkline, Static

from tui.screens.dashboard.header import set_text
from tui.screens.dashboard.model import GpuView

HOT_C = 83.0
OVER_PLAN = 1.05  # peak VRAM this much above the plan marks the plan as wrong


class VramBar(Widget):
    """`████████▌░░░│░░ 61.2/80 GiB`: used memory, the plan's peak as a tick."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "dash-vram--used",
        "dash-vram--over",
        "dash-vram--free",
        "dash-vram--plan",
    }

    DEFAULT_CSS = """
    VramBar { height: 1; }
    VramBar > .dash-vram--used { color: $success; }
    VramBar > .dash-vram--over { color: $error; }
    VramBar > .dash-vram--free { color: $text-disabled; }
    VramBar > .dash-vram--plan { color: $warning; text-style: bold; }
    """

    def __init__(self, **kwargs: str) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.view: GpuView | None = None

    def show(self, view: GpuView) -> None:
        old, self.view = self.view, view
        if old is None or (old.used_gib, old.total_gib, old.plan_gib) != (
            view.used_gib,
            view.total_gib,
            view.plan_gib,
        ):
            self.refresh()

    def render(self) -> Text:
        view = self.view
        if view is None or view.used_gib is None:
            return Text("VRAM  N/A")
        total = view.total_gib or 0.0
        numbers = f" {view.used_gib:.1f}/{total:.0f} GiB" if total else f" {view.used_gib:.1f} GiB"
        width = max(4, self.content_size.width - 5 - len(numbers))
        text = Text("VRAM ")
        if not total:
            text.append(numbers)
            return text
        used = round(min(1.0, view.used_gib / total) * width)
        plan_col = None
        if view.plan_gib:
            plan_col = min(width - 1, round(view.plan_gib / total * width))
        used_style = self.get_component_rich_style("dash-vram--used")
        over_style = self.get_component_rich_style("dash-vram--over")
        free_style = self.get_component_rich_style("dash-vram--free")
        plan_style = self.get_component_rich_style("dash-vram--plan")
        for col in range(width):
            if col == plan_col:
                text.append("│" if col >= used else "┃", plan_style)
            elif col < used:
                over = plan_col is not None and col > plan_col
                text.append("█", over_style if over else used_style)
            else:
                text.append("░", free_style)
        text.append(numbers)
        return text


def _spark_value(value: float | None, unit: str) -> str:
    return "N/A" if value is None else f"{value:.0f}{unit}"


class DashGpuPanel(Vertical):
    DEFAULT_CLASSES = "dash-gpu"

    def __init__(self, view: GpuView) -> None:
        super().__init__(id=f"dash-gpu-{view.index}")
        self.view = view
        self._ready = False
        self._bar: VramBar
        self._plan: Static
        self._sparks: dict[str, tuple[Sparkline, Label]] = {}

    def compose(self) -> ComposeResult:
        yield VramBar(classes="dash-vram")
        yield Static("", classes="dash-gpu-plan")
        for key, label in (("util", "util"), ("temp", "temp"), ("power", "power")):
            with Horizontal(classes="dash-spark-row"):
                yield Label(label, classes="dash-spark-label")
                yield Sparkline([], classes=f"dash-spark -{key}")
                yield Label("", classes=f"dash-spark-value -{key}")

    def on_mount(self) -> None:
        self._bar = self.query_one(VramBar)
        self._plan = self.query_one(".dash-gpu-plan", Static)
        self._sparks = {
            key: (
                self.query_one(f".dash-spark.-{key}", Sparkline),
                self.query_one(f".dash-spark-value.-{key}", Label),
            )
            for key in ("util", "temp", "power")
        }
        self._ready = True
        self.show(self.view)

    def show(self, view: GpuView) -> None:
        self.view = view
        if not self._ready:
            return  # not composed yet: on_mount shows the latest view
        name = f" · {view.name}" if view.name else ""
        title = f"GPU {view.index}{name}"
        if self.border_title != title:
            self.border_title = title
        total = view.total_gib or 0.0
        used = view.used_gib or 0.0
        over_plan = bool(view.plan_gib) and view.peak_gib > (view.plan_gib or 0) * OVER_PLAN
        self.set_class(over_plan, "-over-plan")
        self.set_class(bool(total) and used / total >= 0.95, "-full")
        self.set_class((view.temp or 0.0) >= HOT_C, "-hot")
        self._bar.show(view)
        peak = f"peak {view.peak_gib:.1f} GiB"
        if view.plan_gib and over_plan:
            delta = (view.peak_gib / view.plan_gib - 1) * 100
            plan_text = f"{peak} · {delta:+.0f}% over plan {view.plan_gib:.1f}"
        elif view.plan_gib:
            delta = (view.peak_gib / view.plan_gib - 1) * 100
            plan_text = f"{peak} · plan {view.plan_gib:.1f} ({delta:+.0f}%)"
        else:
            plan_text = f"{peak} · no plan to compare"
        set_text(self._plan, plan_text)
        for key, values, current, unit in (
            ("util", view.util_hist, view.util, "%"),
            ("temp", view.temp_hist, view.temp, "°C"),
            ("power", view.power_hist, view.power, " W"),
        ):
            spark, value = self._sparks[key]
            if list(spark.data or []) != values:
                spark.data = list(values)
            set_text(value, _spark_value(current, unit))
