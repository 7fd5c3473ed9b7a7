"""Where a run stands and when it will end.

`Progress` is the snapshot a dashboard shows (step, epoch, throughput, ETA). `Pace` follows the
seconds per step (the ETA) and the seconds between metrics lines (how long a silence must last
before the run counts as stalled), as exponential moving averages.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    step: int | None
    max_steps: int | None
    epoch: float | None
    seconds_per_step: float | None
    eta_seconds: float | None
    tokens_seen: float | None
    first_t: float | None  # the first metrics line of this history
    last_t: float | None  # the last one

    @property
    def fraction(self) -> float | None:
        if self.step is None or not self.max_steps:
            return None
        return max(0.0, min(1.0, self.step / self.max_steps))


class Pace:
    """Seconds per step (ETA) and seconds per line (stall threshold), as EMAs; the first
    `skip_steps` intervals after a start or resume are slow (compilation, warm-up) and skipped."""

    ALPHA = 0.1

    def __init__(self, skip_steps: int) -> None:
        self.skip_steps = skip_steps
        self.seconds_per_step: float | None = None
        self.line_interval: float | None = None
        self._prev: tuple[int, float] | None = None
        self._skip = skip_steps

    def reset(self) -> None:
        """Start over (a new history, or a resume from an earlier step)."""
        self._prev = self.seconds_per_step = self.line_interval = None
        self._skip = self.skip_steps

    def observe(self, step: int, t: float | None) -> None:
        """A metrics line with a loss, logged at `step` at time `t`."""
        if t is None:
            return
        prev = self._prev
        self._prev = (step, t)
        if prev is None:
            return
        steps, dt = step - prev[0], t - prev[1]
        if steps <= 0 or dt <= 0:
            return
        if self.seconds_per_step is not None and dt / steps > 20 * self.seconds_per_step + 600:
            self._skip = self.skip_steps  # a long pause (restart): start over
            return
        if self._skip > 0:
            self._skip -= 1
            return
        alpha = self.ALPHA
        per_step = dt / steps
        self.seconds_per_step = (
            per_step
            if self.seconds_per_step is None
            else self.seconds_per_step + alpha * (per_step - self.seconds_per_step)
        )
        self.line_interval = (
            dt
            if self.line_interval is None
            else self.line_interval + alpha * (dt - self.line_interval)
        )

    def eta(self, step: int | None, max_steps: float | None) -> float | None:
        """Seconds left at the current pace, when both the pace and the goal are known."""
        if self.seconds_per_step is None or not max_steps or step is None:
            return None
        return max(0.0, (max_steps - step) * self.seconds_per_step)

    def stall_threshold(self, floor: float) -> float:
        """How long without a new step means stalled: `floor`, or five lines' worth on a run
        that logs more rarely than that."""
        if self.line_interval is None:
            return floor
        return max(floor, 5.0 * self.line_interval)
