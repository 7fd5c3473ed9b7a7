"""What a preference run (DPO, ORPO, KTO, SimPO) shows beyond its loss, and its two alerts.

TRL logs per step `rewards/chosen` and `rewards/rejected` (beta-scaled log-ratios against the
reference, or the log-probs themselves where there is no reference), `rewards/margins` (their
mean difference) and `rewards/accuracies` (the share of pairs whose chosen reward beats the
rejected one; KTO logs none). `PreferenceMonitor` keeps a bounded series of each and watches two
failures a loss curve hides:

- the margin collapses: it grew, then fell back near 0 (the policy unlearned the preference,
  often a too-high learning rate or beta), or every margin of a window is negative (the policy
  prefers the rejected answers);
- the accuracy sticks at ~0.5 after warm-up: the policy tells chosen from rejected no better
  than a coin (a learning rate too low to move, swapped or near-identical pairs).

Thresholds are counted in logged values (one per `logging_steps`), not in steps.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from engine.monitor.alerts import Alert
from engine.monitor.records import num
from engine.monitor.series import Series

# TRL's keys, in metrics.jsonl as the callback writes them.
CHOSEN, REJECTED = "rewards/chosen", "rewards/rejected"
ACCURACY, MARGIN = "rewards/accuracies", "rewards/margins"

# Logged values averaged for every check: at a batch of 8 pairs one accuracy moves in steps
# of 1/8, so a single value says little; 20 of them average a coin's noise down to ±0.04.
WINDOW = 20
# No alert before this many logged values: at step 0 the policy is the reference (rewards 0,
# accuracy 0 because ties do not count) and the first few dozen steps are still moving.
WARMUP_LOGS = 30
# ... nor before this share of the run: a slow schedule (lr 5e-7) may sit near 0.5 a while.
WARMUP_SHARE = 0.1
# "Stuck at 0.5": the window's mean accuracy within this of 0.5 (2.5σ of a coin over 20 logs
# of 8 pairs; a policy that learned anything sits at 0.65 and above).
STUCK_BAND = 0.1
# "The margin grew": its window mean reached this (beta 0.1: a log-ratio gap of 5 nats, a
# preference clearly learned; a run with a much smaller beta never arms the collapse alert).
MARGIN_GROWN = 0.5
# "Back near 0": the window mean fell to this share of its peak (lost four fifths of it).
MARGIN_COLLAPSE_SHARE = 0.2
# "Negative over a window": every one of the last this-many margins below 0 (noise around 0
# does that once in 2^10; a preference turned around does it every time).
NEGATIVE_RUN = 10


def mean(values: Any) -> float | None:
    items = list(values)
    return sum(items) / len(items) if items else None


class PreferenceMonitor:
    """The reward series of one preference run and the state of its two alerts."""

    def __init__(self, series: Callable[[], Series]) -> None:
        self.chosen = series()
        self.rejected = series()
        self.accuracy = series()
        self.margin = series()
        self._accuracies: deque[float] = deque(maxlen=WINDOW)
        self._margins: deque[float] = deque(maxlen=max(WINDOW, NEGATIVE_RUN))
        self._logs = 0
        self._peak: float | None = None  # the highest window mean of the margin so far
        self._raised: set[str] = set()  # each alert once per history

    def all_series(self) -> list[Series]:
        return [self.chosen, self.rejected, self.accuracy, self.margin]

    @property
    def seen(self) -> bool:
        """Whether any reward was logged (a run whose spec is missing is still recognised)."""
        return bool(self.margin.retained or self.chosen.retained)

    @property
    def recent_accuracy(self) -> float | None:
        """The mean accuracy of the last `WINDOW` logged values (what the alert reads)."""
        return mean(self._accuracies)

    def add(self, x: float, record: dict[str, Any], max_steps: float | None) -> list[Alert]:
        """Take one metrics record; the alerts it raises (each kind once)."""
        chosen, rejected = num(record.get(CHOSEN)), num(record.get(REJECTED))
        accuracy, margin = num(record.get(ACCURACY)), num(record.get(MARGIN))
        if chosen is not None:
            self.chosen.append(x, chosen)
        if rejected is not None:
            self.rejected.append(x, rejected)
        if margin is None and chosen is not None and rejected is not None:
            margin = chosen - rejected
        if accuracy is None and margin is None:
            return []
        self._logs += 1
        if accuracy is not None:
            self.accuracy.append(x, accuracy)
            self._accuracies.append(accuracy)
        if margin is not None:
            self.margin.append(x, margin)
            self._margins.append(margin)
        warm = self._logs >= WARMUP_LOGS and (not max_steps or x >= WARMUP_SHARE * max_steps)
        alerts = []
        step = int(x)
        t = num(record.get("t"))
        if margin is not None:
            alerts.extend(self._check_margin(step, t, warm))
        if accuracy is not None and warm:
            alerts.extend(self._check_accuracy(step, t))
        return alerts

    def _check_margin(self, step: int, t: float | None, warm: bool) -> list[Alert]:
        window = list(self._margins)[-WINDOW:]
        now = sum(window) / len(window)
        if len(window) == WINDOW:
            self._peak = now if self._peak is None else max(self._peak, now)
        peak = self._peak
        if (
            peak is not None
            and peak >= MARGIN_GROWN
            and now <= MARGIN_COLLAPSE_SHARE * peak
            and self._once("margin_collapse")
        ):
            return [margin_collapse_alert(step, t, now, peak)]
        last = list(self._margins)[-NEGATIVE_RUN:]
        if warm and len(last) == NEGATIVE_RUN and max(last) < 0 and self._once("margin_negative"):
            return [margin_negative_alert(step, t, now)]
        return []

    def _check_accuracy(self, step: int, t: float | None) -> list[Alert]:
        if len(self._accuracies) < WINDOW:
            return []
        accuracy = sum(self._accuracies) / WINDOW
        if abs(accuracy - 0.5) <= STUCK_BAND and self._once("accuracy_stuck"):
            return [accuracy_stuck_alert(step, t, accuracy)]
        return []

    def _once(self, kind: str) -> bool:
        if kind in self._raised:
            return False
        self._raised.add(kind)
        return True

    def truncate_after(self, x: float) -> None:
        """A resumed run logs from an earlier step: its windows start over."""
        for series in self.all_series():
            series.truncate_after(x)
        self._accuracies.clear()
        self._margins.clear()

    def clear(self) -> None:
        for series in self.all_series():
            series.clear()
        self._accuracies.clear()
        self._margins.clear()
        self._logs = 0
        self._peak = None
        self._raised.clear()


# -- the words -------------------------------------------------------------------------------------
def margin_collapse_alert(step: int, t: float | None, now: float, peak: float) -> Alert:
    return Alert(
        "margin_collapse",
        f"reward margin collapsed at step {step}: {now:.3g} (mean of the last {WINDOW} logs), "
        f"down from {peak:.3g}: the policy is unlearning the preference "
        "(learning rate or beta too high?)",
        severity="warning",
        step=step,
        t=t,
    )


def margin_negative_alert(step: int, t: float | None, now: float) -> Alert:
    return Alert(
        "margin_negative",
        f"reward margin negative at step {step}: the last {NEGATIVE_RUN} logs all below 0 "
        f"(mean {now:.3g}): the policy prefers the rejected answers (swapped columns?)",
        severity="warning",
        step=step,
        t=t,
    )


def accuracy_stuck_alert(step: int, t: float | None, accuracy: float) -> Alert:
    return Alert(
        "accuracy_stuck",
        f"reward accuracy stuck at {accuracy:.2f} at step {step} (mean of the last {WINDOW} "
        "logs): no better than a coin; learning rate too low, or chosen and rejected alike?",
        severity="warning",
        step=step,
        t=t,
    )
