"""The alerts a run raises, and the words they say.

An `Alert` is a typed record a user must see: NaN/inf loss, loss spike, stalled run, out of
memory, and the end of the run (completed, stopped, failed with its failure class).
`SpikeDetector` decides what counts as a spike; the other functions build each kind's alert.
`MetricsStore` decides when they hold and reports each one once.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from engine.humanize import duration
from engine.monitor.records import at_step, num
from engine.monitor.series import Point


@dataclass(frozen=True)
class Alert:
    """Something a user must see: kind is one of nan, spike, stall, oom, died, failed,
    stopped, completed, budget, and a preference run's margin_collapse, margin_negative,
    accuracy_stuck (engine.monitor.preference)."""

    kind: str
    message: str
    severity: str = "error"  # error, warning, information (Textual's notify severities)
    step: int | None = None
    t: float | None = None


class SpikeDetector:
    """A loss spike: well above the median of the last `window` losses, after `warmup` losses;
    after one, the next `window` losses are the same episode and raise nothing."""

    def __init__(self, factor: float, warmup: int, window: int, min_delta: float) -> None:
        self.factor = factor
        self.warmup = warmup
        self.window = window
        self.min_delta = min_delta
        self._recent: deque[float] = deque()
        self._sorted: list[float] = []
        self._seen = 0
        self._quiet_until = -1

    def reset(self) -> None:
        """Forget everything (a new history)."""
        self.restart()
        self._quiet_until = -1

    def restart(self) -> None:
        """Forget the recent losses and start the warm-up over (a resume); what was left of
        the last episode's quiet period stays (counted from the restart)."""
        self._quiet_until = max(self._quiet_until - self._seen, -1)
        self._recent.clear()
        self._sorted.clear()
        self._seen = 0

    def check(self, loss: float) -> float | None:
        """Take the next loss; the recent median when this loss is a spike, else None."""
        spike_median = None
        self._seen += 1
        if (
            self._seen > self.warmup
            and len(self._sorted) >= self.warmup
            and self._seen > self._quiet_until
        ):
            median = self._sorted[len(self._sorted) // 2]
            if loss > self.factor * median and loss - median > self.min_delta:
                self._quiet_until = self._seen + self.window
                spike_median = median
        self._recent.append(loss)
        bisect.insort(self._sorted, loss)
        if len(self._recent) > self.window:
            old = self._recent.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]
        return spike_median


def spike_alert(step: int, loss: float, median: float, t: float | None) -> Alert:
    return Alert(
        "spike",
        f"loss spike at step {step}: {loss:.4g}, "
        f"{loss / median:.1f}× the recent median {median:.4g}",
        severity="warning",
        step=step,
        t=t,
    )


def nan_alert(step: int | None, t: float | None, value: Any) -> Alert:
    """The loss became `value` (NaN or inf; the callback writes NaN as null)."""
    text = "NaN" if value is None else str(value)
    return Alert("nan", f"loss is {text}{at_step(step)}", step=step, t=t)


def oom_alert(step: int | None, t: float | None) -> Alert:
    return Alert("oom", f"out of GPU memory{at_step(step)}", step=step, t=t)


def stall_alert(step: int | None, idle_for: float, gpus_idle: bool, now: float) -> Alert:
    where = f"at step {step}" if step is not None else "before the first step"
    gpu_note = " and the GPUs are idle" if gpus_idle else ""
    return Alert(
        "stall",
        f"stalled {where}: no new step for {duration(idle_for)}{gpu_note}",
        severity="warning",
        step=step,
        t=now,
    )


def budget_alert(record: dict[str, Any]) -> Alert:
    """The trainer's `budget_projection` event: at the measured pace the run will pass a cap."""
    step, t = record.get("step"), num(record.get("t"))
    over = []
    projected_usd, cap = num(record.get("projected_usd")), num(record.get("max_cost"))
    if cap is not None and projected_usd is not None:
        over.append(f"${projected_usd:.4g} projected, over --max-cost ${cap:g}")
    hours = num(record.get("max_hours"))
    if hours is not None:
        projected = duration(num(record.get("projected_s")))
        over.append(f"{projected} projected, over --max-hours {hours:g}")
    text = "; ".join(over) or "the projection is over a cap"
    return Alert(
        "budget",
        f"budget{at_step(step)}: {text}: it will stop there (checkpoint, resumable)",
        severity="warning",
        step=step if isinstance(step, int) else None,
        t=t,
    )


def end_alert(
    state: dict[str, Any],
    step: int | None,
    last_loss: Point | None,
    raised: Iterable[Alert],
    now: float | None,
) -> Alert | None:
    """How a finished run ended, from its state.json; None when it failed on a NaN loss that
    one of the alerts already `raised` reported."""
    status = state.get("status")
    t = num(state.get("finished_at")) or num(state.get("updated_at")) or now
    at = at_step(step)
    if status == "completed":
        tail = f", final loss {last_loss[1]:.4g}" if last_loss else ""
        return Alert("completed", f"completed{at}{tail}", "information", step, t)
    if status == "stopped":
        if state.get("stop_reason") == "budget":
            why = state.get("note") or "budget cap reached"
            return Alert("stopped", f"stopped{at}: {why}", "warning", step, t)
        return Alert("stopped", f"stopped{at}", "information", step, t)
    failure = state.get("failure") or "error"
    note = state.get("note") or state.get("error")
    if failure == "oom":
        text = str(note or "ran out of GPU memory")
        return Alert("oom", f"failed: {text}", "error", step, t)
    if failure == "killed":
        text = str(note or "the run's processes died")
        return Alert("died", f"failed: {text}", "error", step, t)
    if failure == "nan":
        if any(a.kind == "nan" for a in raised):
            return None
        return Alert("nan", f"failed: the loss became NaN{at}", "error", step, t)
    code = state.get("exit_code")
    detail = f" (exit code {code})" if code is not None else ""
    why = f": {note}" if note else ": see the log"
    return Alert("failed", f"failed ({failure}){detail}{why}", "error", step, t)
