"""What a chart draws, as plain data: the dashboard's and compare screen's models build it
without importing textual (so a headless dashboard model runs where textual is not installed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ChartLayer:
    """One thing drawn on a chart: `kind` is points, line or markers; `component` names the
    chart's component class that styles it."""

    xs: list[float]
    ys: list[float]
    kind: str
    component: str


@dataclass(frozen=True)
class ChartData:
    layers: list[ChartLayer]
    version: int
    empty_text: str = "no data yet"
    x_format: Callable[[float], str] | None = None  # the x axis labels (default: compact)
