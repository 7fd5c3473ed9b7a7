"""Several runs side by side: each run's metrics on a shared x axis, their final and best
numbers, and the spec fields in which they differ (`ftui compare`, the compare screen).

How runs line up:
- Every point carries three x values: the step, the tokens seen and the *training* wall time.
  Training time restarts its clock at each `train_begin` event (a resume), so the hours a run
  sat stopped, and the model loading before each attempt, are not counted.
- A resumed run's metrics.jsonl was cut at the checkpoint it resumed from (engine/run/callbacks.py);
  should a file still hold an abandoned attempt (a step that goes back), the points above the
  step it went back to are dropped, as the dashboard's store does.
- Runs of different lengths simply end at different x: nothing is stretched or padded.

Reading goes through `engine.monitor.reading.JsonlSource` (a big file is a sample plus an exact
tail) and every series is cut to a few hundred points with LTTB.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.errors import FtuiError
from engine.monitor.reading import JsonlSource
from engine.monitor.records import num, step_of
from engine.monitor.series import lttb
from engine.run.probe import measured_tokens_per_s
from engine.run.rundir import RunDir, read_json, read_spec

AXES = ("step", "tokens", "time")
# metrics.jsonl key -> what a chart calls it
METRICS = {
    "loss": "loss",
    "eval_loss": "eval loss",
    "lr": "learning rate",
    "tokens_per_s": "tokens/s",
}
# Spec fields that are not settings of the run (the plan is an estimate made for it).
_NOT_SETTINGS = ("plan",)


@dataclass
class Point:
    """One logged line of metrics.jsonl, placed on every axis."""

    step: int
    tokens: float | None
    seconds: float | None  # training wall time, stopped gaps excluded
    values: dict[str, float] = field(default_factory=dict)

    def x(self, axis: str) -> float | None:
        if axis == "step":
            return float(self.step)
        return self.tokens if axis == "tokens" else self.seconds


@dataclass
class RunHistory:
    """One run's metrics as comparable points, with what is needed to describe it."""

    run_id: str
    status: str
    state: dict[str, Any]
    spec: dict[str, Any]
    points: list[Point]
    resumes: int  # how many times training started again from a checkpoint
    sampled: bool  # a big file: the early history is a sample

    def series(self, metric: str, axis: str) -> tuple[list[float], list[float]]:
        xs: list[float] = []
        ys: list[float] = []
        for point in self.points:
            value = point.values.get(metric)
            x = point.x(axis)
            if value is not None and x is not None:
                xs.append(x)
                ys.append(value)
        return xs, ys


def _train_begins(run: RunDir) -> list[float]:
    """When each attempt started training (events.jsonl `train_begin`), oldest first."""
    begins = []
    source = JsonlSource(run.events, 1 << 20, 0)
    for record in source.poll(64 << 20)[1]:
        t = num(record.get("t"))
        if record.get("event") == "train_begin" and t is not None:
            begins.append(t)
    return sorted(begins)


def read_history(run: RunDir) -> RunHistory:
    """A run's metrics placed on the step, tokens and training-time axes."""
    state = read_json(run.state)
    begins = _train_begins(run)
    source = JsonlSource(run.metrics, 1 << 20, 4096, (b'"eval_',))
    _, records = source.poll(16 << 20)
    points: list[Point] = []
    last_t: float | None = None  # of the last kept point
    attempt: int | None = None  # index into begins of the last kept point's attempt
    for record in records:
        step = step_of(record.get("step"))
        if step is None:
            continue
        if points and step < points[-1].step:  # an abandoned attempt left in the file
            while points and points[-1].step >= step:
                points.pop()
            last_t = None  # the next point starts a new attempt's clock
        values = {k: v for k in METRICS if (v := num(record.get(k))) is not None}
        tokens = num(record.get("tokens_seen"))
        if points and points[-1].step == step:  # an eval line shares the step of a train line
            merged = points[-1]
            merged.values.update(values)
            merged.tokens = merged.tokens if merged.tokens is not None else tokens
            continue
        t = num(record.get("t"))
        seconds = None
        if t is not None:
            started = _attempt_of(begins, t)
            before = points[-1].seconds if points else None
            if last_t is not None and started == attempt and before is not None:
                seconds = before + max(0.0, t - last_t)
            else:  # the first point of an attempt: count from its train_begin
                begin = begins[started] if started is not None else t
                seconds = (before or 0.0) + max(0.0, t - begin)
            last_t, attempt = t, started
        points.append(Point(step, tokens, seconds, values))
    return RunHistory(
        run_id=run.run_id,
        status=str(state.get("status") or "starting"),
        state=state,
        spec=read_spec(run),
        points=points,
        resumes=max(0, len(begins) - 1),
        sampled=source.sampled_lines > 0,
    )


def _attempt_of(begins: Sequence[float], t: float) -> int | None:
    """The index of the last training start at or before `t`."""
    found = None
    for index, begin in enumerate(begins):
        if begin <= t:
            found = index
    return found


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"training": {"rank": 16}} -> {"training.rank": 16}."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def spec_diff(specs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The spec fields whose values differ between runs: field -> {run id: value}; a field
    one run's spec lacks counts as None there."""
    flat = {
        run_id: {k: v for k, v in flatten(spec).items() if k.split(".")[0] not in _NOT_SETTINGS}
        for run_id, spec in specs.items()
    }
    names = sorted({name for fields in flat.values() for name in fields})
    diff: dict[str, dict[str, Any]] = {}
    for name in names:
        values = {run_id: fields.get(name) for run_id, fields in flat.items()}
        if len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) > 1:
            diff[name] = values
    return diff


@dataclass(frozen=True)
class RunSummary:
    """The numbers of one run a comparison table shows."""

    run_id: str
    status: str
    model: str
    method: str
    steps: int | None
    max_steps: int | None
    tokens_seen: float | None
    train_seconds: float | None
    final_loss: float | None
    best_loss: float | None  # lowest logged training loss
    best_loss_step: int | None
    final_eval_loss: float | None
    best_eval_loss: float | None
    best_eval_step: int | None
    tokens_per_s: float | None  # steady median over the logged intervals
    resumes: int

    def to_dict(self) -> dict[str, Any]:
        return {k: _clean(v) for k, v in self.__dict__.items()}


def summarize(history: RunHistory) -> RunSummary:
    state = history.state
    points = history.points
    last = points[-1] if points else None

    def final(metric: str) -> float | None:
        return next((p.values[metric] for p in reversed(points) if metric in p.values), None)

    def best(metric: str) -> tuple[float | None, int | None]:
        found = [(p.values[metric], p.step) for p in points if metric in p.values]
        if not found:
            return None, None
        value, step = min(found)
        return value, step

    best_loss, best_loss_step = best("loss")
    best_eval, best_eval_step = best("eval_loss")
    rates = [p.values["tokens_per_s"] for p in points if "tokens_per_s" in p.values]
    max_steps = num(state.get("max_steps"))
    return RunSummary(
        run_id=history.run_id,
        status=history.status,
        model=str(state.get("model") or history.spec.get("model") or "?"),
        method=str(state.get("method") or (history.spec.get("training") or {}).get("method", "?")),
        steps=last.step if last else None,
        max_steps=int(max_steps) if max_steps else None,
        tokens_seen=next((p.tokens for p in reversed(points) if p.tokens is not None), None),
        train_seconds=next((p.seconds for p in reversed(points) if p.seconds is not None), None),
        final_loss=final("loss"),
        best_loss=best_loss,
        best_loss_step=best_loss_step,
        final_eval_loss=final("eval_loss"),
        best_eval_loss=best_eval,
        best_eval_step=best_eval_step,
        tokens_per_s=measured_tokens_per_s(rates) or (sum(rates) / len(rates) if rates else None),
        resumes=history.resumes,
    )


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True)
class Comparison:
    axis: str
    runs: list[RunSummary]
    # metric -> run id -> (xs, ys), downsampled
    series: dict[str, dict[str, tuple[list[float], list[float]]]]
    spec_diff: dict[str, dict[str, Any]]
    sampled: list[str]  # runs whose early history is a sample of a big file

    def to_dict(self) -> dict[str, Any]:
        return {
            "axis": self.axis,
            "runs": [r.to_dict() for r in self.runs],
            "series": {
                metric: {run_id: {"x": xs, "y": ys} for run_id, (xs, ys) in by_run.items()}
                for metric, by_run in self.series.items()
            },
            "spec_diff": self.spec_diff,
            "sampled": self.sampled,
        }


def check_axis(axis: str) -> str:
    if axis not in AXES:
        raise FtuiError(f"unknown x axis {axis!r}", f"use one of {', '.join(AXES)}")
    return axis


def check_runs(runs: Sequence[RunDir]) -> None:
    if len(runs) < 2:
        raise FtuiError("compare needs two runs or more", "e.g. ftui compare RUN_A RUN_B")
    ids = [r.run_id for r in runs]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise FtuiError(f"run {twice[0]} is named twice", "name each run once")


def compare(histories: Sequence[RunHistory], axis: str = "step", points: int = 400) -> Comparison:
    """The comparison of runs already read (`read_history`), on one x axis."""
    check_axis(axis)
    series: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for metric in METRICS:
        by_run = {}
        for history in histories:
            xs, ys = history.series(metric, axis)
            by_run[history.run_id] = lttb(xs, ys, points)
        series[metric] = by_run
    return Comparison(
        axis=axis,
        runs=[summarize(h) for h in histories],
        series=series,
        spec_diff=spec_diff({h.run_id: h.spec for h in histories}),
        sampled=[h.run_id for h in histories if h.sampled],
    )


def compare_runs(runs: Sequence[RunDir], axis: str = "step", points: int = 400) -> Comparison:
    """Read and compare runs (at least two, each once)."""
    check_runs(runs)
    check_axis(axis)
    return compare([read_history(run) for run in runs], axis, points)


# -- as text (the CLI's tables and the compare screen's) --------------------------------------
def compact(value: float | None) -> str:
    """1234 -> 1.2k, 4.1e9 -> 4.1G; "–" when unknown."""
    if value is None:
        return "–"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}" if value == int(value) else f"{value:.3g}"


def axis_text(axis: str, x: float) -> str:
    """An x value as the axis reads: step 1,200, 4.1M tokens, 12m 30s of training."""
    from engine.humanize import duration

    if axis == "step":
        return compact(round(x)) if x >= 10_000 else f"{x:.0f}"
    return compact(x) if axis == "tokens" else duration(x)


def metric_text(metric: str, value: float | None) -> str:
    if value is None:
        return "–"
    if metric == "lr":
        return f"{value:.2e}"
    if metric == "tokens_per_s":
        return compact(value)
    return f"{value:.4f}"


SUMMARY_FIELDS = (
    "status",
    "steps",
    "tokens seen",
    "training time",
    "final loss",
    "best loss (step)",
    "final eval loss",
    "best eval loss (step)",
    "tokens/s",
)


def summary_rows(comparison: Comparison) -> list[tuple[str, ...]]:
    """The final and best numbers as text: a row per SUMMARY_FIELDS entry, a column per run
    (runs side by side read down a column each, and fit 80 columns)."""
    from engine.humanize import duration

    def at(value: float | None, step: int | None) -> str:
        return "–" if value is None else f"{value:.4f} ({step:,})"

    columns = []
    for run in comparison.runs:
        steps = "–" if run.steps is None else f"{run.steps:,}"
        if run.max_steps and run.steps is not None and run.steps < run.max_steps:
            steps += f" of {run.max_steps:,}"
        status = run.status + (f", resumed {run.resumes}×" if run.resumes else "")
        columns.append(
            (
                status,
                steps,
                compact(run.tokens_seen),
                duration(run.train_seconds) if run.train_seconds is not None else "–",
                metric_text("loss", run.final_loss),
                at(run.best_loss, run.best_loss_step),
                metric_text("eval_loss", run.final_eval_loss),
                at(run.best_eval_loss, run.best_eval_step),
                metric_text("tokens_per_s", run.tokens_per_s),
            )
        )
    return [(name, *(column[row] for column in columns)) for row, name in enumerate(SUMMARY_FIELDS)]


def value_at(xs: Sequence[float], ys: Sequence[float], x: float) -> float | None:
    """The last value logged at or before `x` (None before the first or past the run's end)."""
    if not xs or x < xs[0] or x > xs[-1]:
        return None
    import bisect

    return ys[bisect.bisect_right(xs, x) - 1]


def shared_ticks(comparison: Comparison, metric: str, count: int = 4) -> list[float]:
    """`count` x positions evenly up to the longest run's end of `metric`: where a table
    reads every run's value side by side."""
    ends = [xs[-1] for xs, _ in comparison.series[metric].values() if xs]
    if not ends or max(ends) <= 0:
        return []
    hi = max(ends)
    ticks = [hi * (i + 1) / count for i in range(count)]
    if comparison.axis == "step":
        ticks = sorted({float(round(t)) for t in ticks})
    return ticks
