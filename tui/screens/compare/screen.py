"""The compare screen: two or more runs on one chart per metric (loss, eval loss, learning
rate, tokens/s) against step, tokens seen or training time (`x` switches), a table of final and
best numbers, and the spec fields that differ.

The runs are read once in a thread worker (finished runs do not change; `r` reads them again);
switching the axis or resizing only rebuilds the charts from what was read.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static, TabbedContent, TabPane
from textual.worker import get_current_worker

from engine.errors import FtuiError
from engine.monitor.compare import (
    METRICS,
    RunHistory,
    check_axis,
    compare,
    read_history,
    summary_rows,
)
from engine.run.rundir import RunDir
from tui.screens.compare.model import AXIS_TITLES, NEXT_AXIS, SMOOTHED, build_charts, run_colour
from tui.widgets.chart import BrailleChart


class RunsRead(Message):
    """The runs' histories, read off the UI thread (or why they could not be)."""

    def __init__(self, histories: list[RunHistory], error: str | None = None) -> None:
        super().__init__()
        self.histories = histories
        self.error = error


def spec_text(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


class CompareScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("x", "next_axis", "Step/tokens/time"),
        Binding("v", "toggle_view", "Charts/Numbers"),
        Binding("r", "reload", "Reload", show=False),
    ]

    def __init__(self, runs: Sequence[RunDir], *, axis: str = "step") -> None:
        super().__init__()
        self.runs = list(runs)
        self.axis = check_axis(axis)
        self.histories: list[RunHistory] = []
        self.reads = 0
        self._chart_width = 40
        self._version = 0

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Reading the runs…", id="compare-legend")
        with TabbedContent(id="compare-tabs"):
            with TabPane("Charts", id="compare-charts-tab"), Grid(id="compare-charts"):
                for metric in METRICS:
                    yield BrailleChart(id=f"compare-{metric.replace('_', '-')}")
            with TabPane("Numbers", id="compare-numbers-tab"), Vertical(id="compare-numbers"):
                yield DataTable(id="compare-summary", cursor_type="none", zebra_stripes=True)
                yield DataTable(id="compare-diff", cursor_type="none", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.title = "ftui"
        self.sub_title = "compare " + " · ".join(r.run_id for r in self.runs)
        for metric, title in METRICS.items():
            chart = self.chart(metric)
            chart.border_title = title
            if metric in SMOOTHED:
                chart.border_subtitle = "smoothed"
        self.query_one("#compare-summary", DataTable).border_title = "final and best"
        self.query_one("#compare-diff", DataTable).border_title = "spec fields that differ"
        self.read_runs()

    def chart(self, metric: str) -> BrailleChart:
        return self.query_one(f"#compare-{metric.replace('_', '-')}", BrailleChart)

    # -- reading ---------------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="compare-read")
    def read_runs(self) -> None:
        worker = get_current_worker()
        try:
            message = RunsRead([read_history(run) for run in self.runs])
        except (OSError, FtuiError) as exc:
            message = RunsRead([], f"cannot read the runs: {exc}")
        if not worker.is_cancelled:
            self.post_message(message)

    def on_runs_read(self, message: RunsRead) -> None:
        self.reads += 1
        if message.error:
            self.notify(message.error, severity="error", markup=False)
            return
        self.histories = message.histories
        self._show_numbers()
        self._show_charts()

    # -- showing ---------------------------------------------------------------------------------
    def _legend(self) -> Text:
        line = Text()
        line.append(f"x: {AXIS_TITLES[self.axis]} (x switches) · ", style="dim")
        colours = self.app.get_css_variables()
        for index, history in enumerate(self.histories):
            line.append("━━ ", style=colours.get(run_colour(index), ""))
            line.append(history.run_id + "  ")
        return line

    def _show_charts(self) -> None:
        if not self.histories:
            return
        self._version += 1
        charts = build_charts(self.histories, self.axis, self._chart_width, self._version)
        for metric, data in charts.items():
            self.chart(metric).show(data)
        self.query_one("#compare-legend", Static).update(self._legend())

    def _show_numbers(self) -> None:
        comparison = compare(self.histories, self.axis, points=2)
        summary = self.query_one("#compare-summary", DataTable)
        summary.clear(columns=True)
        summary.add_column("run", key="run")
        for history in self.histories:
            summary.add_column(history.run_id, key=history.run_id)
        for row in summary_rows(comparison):
            summary.add_row(*row)
        diff = self.query_one("#compare-diff", DataTable)
        diff.clear(columns=True)
        diff.add_column("field", key="field")
        for history in self.histories:
            diff.add_column(history.run_id, key=history.run_id)
        if not comparison.spec_diff:
            diff.add_row("(the specs are the same)", *("" for _ in self.histories))
        for name, values in comparison.spec_diff.items():
            diff.add_row(name, *(spec_text(values.get(h.run_id)) for h in self.histories))

    def on_resize(self) -> None:
        self.call_after_refresh(self._measure)

    def _measure(self) -> None:
        width = self.chart("loss").content_size.width
        if width and abs(width - self._chart_width) > 2:
            self._chart_width = width
            self._show_charts()

    # -- actions ---------------------------------------------------------------------------------
    def action_next_axis(self) -> None:
        self.axis = NEXT_AXIS[self.axis]
        self._show_charts()

    def action_toggle_view(self) -> None:
        tabs = self.query_one(TabbedContent)
        charts = "compare-charts-tab"
        tabs.active = "compare-numbers-tab" if tabs.active == charts else charts

    def action_reload(self) -> None:
        self.read_runs()

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()
