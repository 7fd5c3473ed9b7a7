"""What the compare screen draws, as plain data built from the runs' histories: one chart per
metric with a coloured line per run, on the chosen x axis."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from engine.monitor.compare import METRICS, RunHistory, axis_text
from engine.monitor.series import lttb
from tui.widgets.chart import BrailleChart
from tui.widgets.chart_data import ChartData, ChartLayer

# Noisy per-step metrics are drawn smoothed (the same EMA weight as the dashboard's loss line),
# so several runs on one chart stay readable; eval loss and learning rate are drawn as logged.
SMOOTHED = {"loss": 0.1, "tokens_per_s": 0.1}
AXIS_TITLES = {"step": "step", "tokens": "tokens seen", "time": "training time"}
NEXT_AXIS = {"step": "tokens", "tokens": "time", "time": "step"}


def ema(values: Sequence[float], weight: float) -> list[float]:
    out: list[float] = []
    level: float | None = None
    for value in values:
        level = value if level is None else level + weight * (value - level)
        out.append(level)
    return out


def run_component(index: int) -> str:
    """The chart component class that colours the run at `index` (colours repeat after six)."""
    return f"chart--run-{index % len(BrailleChart.RUN_COLOURS)}"


def run_colour(index: int) -> str:
    """The theme variable of that colour (for a legend)."""
    return BrailleChart.RUN_COLOURS[index % len(BrailleChart.RUN_COLOURS)]


def x_format(axis: str) -> Callable[[float], str]:
    return lambda x: axis_text(axis, x)


def build_charts(
    histories: Sequence[RunHistory], axis: str, width: int, version: int
) -> dict[str, ChartData]:
    """metric -> chart, one line per run (in the order given), downsampled to ~2 points a cell."""
    charts = {}
    for order, metric in enumerate(METRICS):
        layers = []
        for index, history in enumerate(histories):
            xs, ys = history.series(metric, axis)
            if not xs:
                continue
            if metric in SMOOTHED:
                ys = ema(ys, SMOOTHED[metric])
            xs, ys = lttb(xs, ys, max(3, 2 * width))
            layers.append(ChartLayer(xs, ys, "line", run_component(index)))
        empty = "no run logged it" if metric != "eval_loss" else "no run evaluated"
        if axis == "time" and not layers and any(h.points for h in histories):
            empty = "no timestamps"
        charts[metric] = ChartData(layers, version * 8 + order, empty, x_format(axis))
    return charts
