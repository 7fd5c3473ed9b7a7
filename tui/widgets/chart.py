"""A line/scatter chart drawn with braille dots (2×4 per cell), styled by component classes.
Used by the dashboard (one run) and the compare screen (one coloured line per run).

Why not textual-plotext: for the ~250 points a dashboard chart holds, plotext's build plus
`Text.from_ansi` costs ~10 ms a chart; this costs ~1-2 ms (benchmarks/dashboard.py measures
both), which matters at one refresh a second on a 2-core box. Colours come from the theme
through the component classes below; the last layer drawn in a cell gives it its colour.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip
from textual.widget import Widget

from tui.widgets.chart_data import ChartData, ChartLayer


def compact(value: float | None, digits: int = 1) -> str:
    """1234 -> 1.2k, 4.1e9 -> 4.1G."""
    if value is None:
        return "–"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.{digits}f}{unit}"
    return f"{value:.{digits}f}" if value != int(value) else f"{int(value)}"


# Braille dot bits by (row 0-3, column 0-1) inside a cell.
_DOTS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))
_MARKER = "◆"


def _label(value: float) -> str:
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-2 or magnitude >= 1e5):
        return f"{value:.1e}"
    return f"{value:.4g}"


class BrailleChart(Widget):
    # One colour per run on the compare screen: component chart--run-N takes the theme
    # variable RUN_COLOURS[N] (runs beyond six repeat them).
    RUN_COLOURS: ClassVar[tuple[str, ...]] = (
        "accent",
        "warning",
        "success",
        "error",
        "secondary",
        "foreground",
    )
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "chart--points",
        "chart--line",
        "chart--marker",
        "chart--axis",
        "chart--empty",
        *(f"chart--run-{i}" for i in range(len(RUN_COLOURS))),
    }

    DEFAULT_CSS = """
    BrailleChart { height: 1fr; }
    BrailleChart > .chart--points { color: $foreground-darken-3; }
    BrailleChart > .chart--line { color: $accent; }
    BrailleChart > .chart--marker { color: $success; text-style: bold; }
    BrailleChart > .chart--axis { color: $text-muted; }
    BrailleChart > .chart--empty { color: $text-muted; }
    """ + "".join(
        f"BrailleChart > .chart--run-{i} {{ color: ${variable}; }}\n"
        for i, variable in enumerate(RUN_COLOURS)
    )

    def __init__(self, **kwargs: str) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.data = ChartData([], -1)
        self._cache_key: tuple[object, ...] | None = None
        self._cache: list[Strip] = []
        self.renders = 0  # how often the chart was drawn (tests, benchmarks)

    def show(self, data: ChartData) -> None:
        if data.version == self.data.version and data.version >= 0:
            return
        self.data = data
        self.refresh()

    def render_line(self, y: int) -> Strip:
        """The Line API: strips straight from the dot grid, cached until data or size change
        (cheaper than a Text that Textual would re-wrap on every refresh)."""
        width, height = self.content_size.width, self.content_size.height
        key = (self.data.version, width, height, self.app.theme)
        if key != self._cache_key:
            self._cache_key = key
            self._cache = self.draw(width, height)
        if y < len(self._cache):
            return self._cache[y]
        return Strip.blank(width, self.rich_style)

    def _style(self, component: str) -> Style:
        return self.rich_style + self.get_component_rich_style(component)

    def draw(self, width: int, height: int) -> list[Strip]:
        self.renders += 1
        base = self.rich_style
        layers = [layer for layer in self.data.layers if layer.xs]
        if not layers or width < 12 or height < 2:
            # Data that does not fit says so: "no data yet" would be a lie.
            text = self.data.empty_text if not layers else "(too small)"
            text = text[:width].center(width)
            blank = Strip.blank(width, base)
            empty = Strip([Segment(text, self._style("chart--empty"))], width)
            return [empty if row == height // 2 else blank for row in range(height)]
        x_lo = min(layer.xs[0] for layer in layers)
        x_hi = max(layer.xs[-1] for layer in layers)
        y_lo = min(min(layer.ys) for layer in layers)
        y_hi = max(max(layer.ys) for layer in layers)
        if x_hi <= x_lo:
            x_lo, x_hi = x_lo - 1, x_hi + 1
        if y_hi <= y_lo:
            pad = abs(y_hi) * 0.05 or 1.0
            y_lo, y_hi = y_lo - pad, y_hi + pad
        labels = [_label(y_hi), _label((y_hi + y_lo) / 2), _label(y_lo)]
        gutter = max(len(s) for s in labels) + 1
        cols, rows = width - gutter, height - 1
        dots_x, dots_y = cols * 2, rows * 4
        bits = [[0] * cols for _ in range(rows)]
        owner = [[-1] * cols for _ in range(rows)]
        marks: dict[tuple[int, int], int] = {}
        sx = (dots_x - 1) / (x_hi - x_lo)
        sy = (dots_y - 1) / (y_hi - y_lo)

        def dot(px: int, py: int, index: int) -> None:
            row, col = py >> 2, px >> 1
            bits[row][col] |= _DOTS[py & 3][px & 1]
            owner[row][col] = index

        for index, layer in enumerate(layers):
            pts = [
                (round((x - x_lo) * sx), round((y_hi - y) * sy))
                for x, y in zip(layer.xs, layer.ys, strict=True)
            ]
            if layer.kind == "markers":
                for px, py in pts:
                    marks[(py >> 2, px >> 1)] = index
            elif layer.kind == "line":
                _polyline(pts, functools.partial(dot, index=index))
            else:
                for px, py in pts:
                    dot(px, py, index)
        styles = [self._style(layer.component) for layer in layers]
        axis = self._style("chart--axis")
        label_rows = {0: labels[0], (rows - 1) // 2: labels[1], rows - 1: labels[2]}
        strips = []
        for row in range(rows):
            label = label_rows.get(row)
            edge = "┤" if label is not None else "│"
            segments = [Segment(f"{label or '':>{gutter - 1}}{edge}", axis)]
            segments.extend(_cells(bits[row], owner[row], marks, row, styles, base))
            strips.append(Strip(segments, width))
        label_x = self.data.x_format or functools.partial(compact, digits=0)
        left, mid, right = label_x(x_lo), label_x((x_lo + x_hi) / 2), label_x(x_hi)
        axis_line = left.ljust(cols)
        at = (cols - len(mid)) // 2
        if at > len(left) + 1 and at + len(mid) < cols - len(right) - 1:
            axis_line = axis_line[:at] + mid + axis_line[at + len(mid) :]
        axis_line = axis_line[: cols - len(right)] + right
        strips.append(Strip([Segment(" " * (gutter - 1) + "└" + axis_line, axis)], width))
        return strips


def _cells(
    bits: list[int],
    owner: list[int],
    marks: dict[tuple[int, int], int],
    row: int,
    styles: list[Style],
    blank: Style,
) -> list[Segment]:
    """One chart row, as runs of cells that share a style."""
    segments: list[Segment] = []
    run: list[str] = []
    run_style: Style | None = None
    for col, cell in enumerate(bits):
        mark = marks.get((row, col))
        if mark is not None:
            char, style = _MARKER, styles[mark]
        elif cell:
            char, style = chr(0x2800 + cell), styles[owner[col]]
        else:
            char, style = " ", blank
        if style is not run_style and run:
            segments.append(Segment("".join(run), run_style))
            run = []
        run_style = style
        run.append(char)
    if run:
        segments.append(Segment("".join(run), run_style))
    return segments


def _polyline(points: list[tuple[int, int]], plot: Callable[[int, int], None]) -> None:
    """Connect consecutive points with Bresenham lines."""
    if len(points) == 1:
        plot(*points[0])
        return
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        step_x = 1 if x0 < x1 else -1
        step_y = 1 if y0 < y1 else -1
        err = dx + dy
        while True:
            plot(x0, y0)
            if x0 == x1 and y0 == y1:
                break
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += step_x
            if e2 <= dx:
                err += dx
                y0 += step_y


__all__ = ["BrailleChart", "ChartData", "ChartLayer"]
