"""`ftui compare` as text: the summary table, each metric at shared x positions, the spec
fields that differ."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

from engine.monitor.compare import (
    METRICS,
    Comparison,
    axis_text,
    metric_text,
    shared_ticks,
    summary_rows,
    value_at,
)

AXIS_NAMES = {"step": "step", "tokens": "tokens seen", "time": "training time"}


def spec_value(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def print_comparison(comparison: Comparison, console: Console) -> None:
    summary = Table(box=None, pad_edge=False)
    summary.add_column("run", no_wrap=True)
    for run in comparison.runs:
        summary.add_column(run.run_id)
    for row in summary_rows(comparison):
        summary.add_row(*row)
    console.print(summary)
    for metric, title in METRICS.items():
        ticks = shared_ticks(comparison, metric)
        if not ticks:
            continue
        table = Table(box=None, pad_edge=False)
        table.add_column(f"{title} at {AXIS_NAMES[comparison.axis]}", no_wrap=True)
        for x in ticks:
            table.add_column(axis_text(comparison.axis, x), justify="right")
        for run_id, (xs, ys) in comparison.series[metric].items():
            table.add_row(run_id, *(metric_text(metric, value_at(xs, ys, x)) for x in ticks))
        console.print()
        console.print(table)
    console.print()
    if not comparison.spec_diff:
        console.print("specs: identical")
    else:
        diff = Table(box=None, pad_edge=False)
        diff.add_column("spec field (differs)", no_wrap=True)
        for run in comparison.runs:
            diff.add_column(run.run_id)
        for name, values in comparison.spec_diff.items():
            diff.add_row(name, *(spec_value(values.get(r.run_id)) for r in comparison.runs))
        console.print(diff)
    if comparison.sampled:
        console.print(
            f"[dim]early history sampled (big metrics files): {', '.join(comparison.sampled)}[/]"
        )
