"""What a run costs: its price, the money spent so far, the projected total, and its caps.

A run's price is fixed at launch and kept in its spec (`budget.price`, USD per GPU-hour; a CPU
run's price is per hour of the machine): `--price`, else the user's own rate in
`$FTUI_HOME/config.toml`, else the GPU profile's on-demand price. A CPU run has a price only
when one is given. Cost is wall time × GPUs × price, the wall time being every attempt of the
run from its supervisor's start to its end (model loading and checkpoint saves are paid for
too; time between a stop and a resume is not). The projection adds the remaining steps at the
measured seconds per step. Headless: shared by `ftui status`, the dashboard and the trainer's
callback (which checks the caps each step).

    # $FTUI_HOME/config.toml
    [prices]          # USD per GPU-hour, by GPU profile id (`ftui plan --list-gpus`)
    h100 = 2.49
    cpu = 0.10        # per hour of this machine, for CPU runs
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.errors import FtuiError
from engine.run.rundir import read_spec

CONFIG_FILE = "config.toml"
BUDGET_STOP_REASON = "budget"
# The projection needs a few steps of pace before it means anything.
MIN_STEPS_FOR_PROJECTION = 3


def config_path(home: Path | None = None) -> Path:
    from engine.paths import ftui_home

    return (home or ftui_home()) / CONFIG_FILE


def read_prices(home: Path | None = None) -> dict[str, float]:
    """`[prices]` of `$FTUI_HOME/config.toml`: profile id (lower case) -> USD per GPU-hour."""
    path = config_path(home)
    if not path.is_file():
        return {}
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise FtuiError(
            f"{path} is not readable TOML: {exc}",
            "fix it, e.g. `[prices]` then `h100 = 2.49` (USD per GPU-hour)",
        ) from exc
    prices = data.get("prices", {})
    if not isinstance(prices, dict):
        raise FtuiError(f"{path}: prices must be a table", "write `[prices]` then `h100 = 2.49`")
    out: dict[str, float] = {}
    for key, value in prices.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise FtuiError(
                f"{path}: prices.{key} = {value!r} is not a price",
                "a number of USD per GPU-hour, 0 or more, e.g. 2.49",
            )
        out[str(key).lower()] = float(value)
    return out


def resolve_price(
    gpu_id: str | None, *, given: float | None, on_cpu: bool, home: Path | None = None
) -> tuple[float | None, str | None]:
    """The run's price per GPU-hour and where it came from (None: no price known)."""
    if given is not None:
        return float(given), "--price"
    prices = read_prices(home)
    key = "cpu" if on_cpu else (gpu_id or "").lower()
    if key and key in prices:
        return prices[key], f"{config_path(home)} [prices] {key}"
    if on_cpu or not gpu_id:
        return None, None
    from profiles import find_gpu_profile

    profile = find_gpu_profile(gpu_id)
    if profile is None:
        return None, None
    return profile.price_usd_per_hour, f"profile {profile.id} ({profile.price_date} on-demand)"


def billed_gpus(spec_dict: dict[str, Any]) -> int:
    """GPUs paid for: every GPU of every node; a CPU run counts as one machine."""
    if spec_dict.get("device") == "cpu":
        return 1
    training = spec_dict.get("training") or {}
    distributed = spec_dict.get("distributed") or {}
    return max(1, int(training.get("num_gpus") or 1)) * max(1, int(distributed.get("nodes") or 1))


# Events written from outside an attempt (by commands): they never extend one.
_COMMAND_EVENTS = ("created", "resume", "budget_changed")


def run_seconds(events: list[dict[str, Any]], *, live: bool, now: float) -> float:
    """Wall time of every attempt: from each `supervisor_started` to its `exited` (or, when it
    was killed, the last thing it wrote); a live run's last attempt runs to `now`."""
    total = 0.0
    start: float | None = None
    last = 0.0
    for record in events:
        t, kind = record.get("t"), str(record.get("event"))
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            continue
        if kind == "supervisor_started":
            if start is not None:
                total += max(0.0, last - start)
            start = last = float(t)
        elif start is not None and kind not in _COMMAND_EVENTS and "by_user" not in kind:
            last = float(t)
            if kind == "exited":
                total += max(0.0, last - start)
                start = None
    if start is not None:
        total += max(0.0, (now if live else last) - start)
    return total


def seconds_per_step(records: list[dict[str, Any]], since: float | None = None) -> float | None:
    """Measured seconds per step over the metrics lines (of the current attempt: those after
    `since`), None until a few steps are in."""
    points = [
        (float(r["t"]), int(r["step"]))
        for r in records
        if isinstance(r.get("t"), (int, float))
        and isinstance(r.get("step"), int)
        and (since is None or r["t"] >= since)
    ]
    if len(points) < 2:
        return None
    (t0, s0), (t1, s1) = points[0], points[-1]
    if s1 - s0 < MIN_STEPS_FOR_PROJECTION - 1 or t1 <= t0:
        return None
    return (t1 - t0) / (s1 - s0)


@dataclass(frozen=True)
class Cost:
    """A run's money, as `ftui status --json` reports it (`cost`)."""

    price_per_gpu_hour: float | None
    price_source: str | None
    gpus: int
    elapsed_s: float
    spent_usd: float | None
    projected_s: float | None
    projected_usd: float | None
    plan_usd: float | None
    plan_band_usd: list[float] | None
    plan_eta_s: float | None
    max_cost: float | None
    max_hours: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cost_of(
    *,
    budget: dict[str, Any],
    gpus: int,
    elapsed_s: float,
    remaining_s: float | None,
    plan: dict[str, Any],
) -> Cost:
    price = _number(budget.get("price"))
    rate = price * gpus if price is not None else None
    projected_s = elapsed_s + remaining_s if remaining_s is not None else None
    band = plan.get("cost_band_usd")
    return Cost(
        price_per_gpu_hour=price,
        price_source=budget.get("price_source"),
        gpus=gpus,
        elapsed_s=round(elapsed_s, 1),
        spent_usd=_usd(rate, elapsed_s),
        projected_s=round(projected_s, 1) if projected_s is not None else None,
        projected_usd=_usd(rate, projected_s),
        plan_usd=_number(plan.get("cost_usd")),
        plan_band_usd=[float(v) for v in band]
        if isinstance(band, list) and len(band) == 2
        else None,
        plan_eta_s=_number(plan.get("eta_s")),
        max_cost=_number(budget.get("max_cost")),
        max_hours=_number(budget.get("max_hours")),
    )


def run_cost(
    run: Any, state: dict[str, Any], *, now: float, remaining_s: float | None = None
) -> Cost:
    """The cost of a run from its folder (`remaining_s`: the caller's ETA; measured from the
    metrics tail when not given)."""
    from engine.run.rundir import FINAL, JsonlTail, read_json

    spec = read_spec(run)
    events = JsonlTail(run.events).read()
    live = state.get("status") not in FINAL
    elapsed = run_seconds(events, live=live, now=now)
    if remaining_s is None and live:
        remaining_s = _remaining(run, state, events)
    elif not live:
        remaining_s = 0.0
    try:
        plan = read_json(run.plan)
    except (OSError, ValueError):
        plan = {}
    return cost_of(
        budget=dict(spec.get("budget") or {}),
        gpus=billed_gpus(spec),
        elapsed_s=elapsed,
        remaining_s=remaining_s,
        plan=plan or {},
    )


def tail_records(path: Path, max_bytes: int = 65_536) -> list[dict[str, Any]]:
    """The complete JSONL records in the last `max_bytes` of a file (cheap on big files)."""
    import json
    import os

    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            lines = fh.read().split(b"\n")
    except OSError:
        return []
    if size > max_bytes:
        lines = lines[1:]  # cut in the middle
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def _remaining(run: Any, state: dict[str, Any], events: list[dict[str, Any]]) -> float | None:
    starts = [e.get("t") for e in events if e.get("event") == "supervisor_started"]
    records = tail_records(run.metrics)
    pace = seconds_per_step(records, starts[-1] if starts else None)
    steps = [r["step"] for r in records if isinstance(r.get("step"), int)]
    max_steps = state.get("max_steps")
    if pace is None or not steps or not isinstance(max_steps, int):
        return None
    return float(max(0, max_steps - steps[-1]) * pace)


class BudgetWatch:
    """The trainer's per-step check of the caps (rank 0): arithmetic only, no I/O."""

    def __init__(
        self,
        *,
        usd_per_hour: float | None,
        max_cost: float | None,
        max_hours: float | None,
        elapsed_at_begin: float,
        begin_t: float,
        start_step: int,
    ) -> None:
        self.usd_per_hour = usd_per_hour
        self.max_cost = max_cost
        self.max_hours = max_hours
        self.elapsed_at_begin = elapsed_at_begin
        self.begin_t = begin_t
        self.start_step = start_step
        self.projection_alerted = False

    @property
    def active(self) -> bool:
        return self.max_hours is not None or (
            self.max_cost is not None and self.usd_per_hour is not None
        )

    def elapsed(self, now: float) -> float:
        return self.elapsed_at_begin + max(0.0, now - self.begin_t)

    def reached(self, now: float) -> str | None:
        """The cap reached, in words, or None."""
        elapsed = self.elapsed(now)
        if self.max_hours is not None and elapsed >= self.max_hours * 3600:
            return f"--max-hours {self.max_hours:g} reached ({elapsed / 3600:.3g} h)"
        if self.max_cost is not None and self.usd_per_hour is not None:
            spent = elapsed / 3600 * self.usd_per_hour
            if spent >= self.max_cost:
                return f"--max-cost ${self.max_cost:g} reached (${spent:.4g} spent)"
        return None

    def projection_over(self, now: float, step: int, max_steps: int) -> dict[str, Any] | None:
        """The first time the projected total exceeds a cap: what to tell the user."""
        done = step - self.start_step
        if self.projection_alerted or done < MIN_STEPS_FOR_PROJECTION or max_steps <= 0:
            return None
        pace = max(0.0, now - self.begin_t) / done
        total_s = self.elapsed(now) + max(0, max_steps - step) * pace
        over: dict[str, Any] = {"projected_s": round(total_s, 1)}
        if self.max_hours is not None and total_s > self.max_hours * 3600:
            over["max_hours"] = self.max_hours
        if self.usd_per_hour is not None:
            over["projected_usd"] = round(total_s / 3600 * self.usd_per_hour, 6)
            if self.max_cost is not None and over["projected_usd"] > self.max_cost:
                over["max_cost"] = self.max_cost
        if "max_hours" not in over and "max_cost" not in over:
            return None
        self.projection_alerted = True
        return over


def budget_watch(run: Any, state_step: int, now: float) -> BudgetWatch | None:
    """The caps of the run in `run` (from spec.yaml), with the time its earlier attempts and
    this one so far took; None when it has no cap."""
    from engine.run.rundir import JsonlTail

    spec = read_spec(run)
    budget = dict(spec.get("budget") or {})
    max_cost, max_hours = _number(budget.get("max_cost")), _number(budget.get("max_hours"))
    if max_cost is None and max_hours is None:
        return None
    price = _number(budget.get("price"))
    watch = BudgetWatch(
        usd_per_hour=price * billed_gpus(spec) if price is not None else None,
        max_cost=max_cost,
        max_hours=max_hours,
        elapsed_at_begin=run_seconds(JsonlTail(run.events).read(), live=True, now=now),
        begin_t=now,
        start_step=state_step,
    )
    return watch if watch.active else None


@dataclass(frozen=True)
class Idle:
    """The GPUs of this machine since its last GPU run ended (the rent goes on)."""

    ended_at: float  # when the last run ended (idle since)
    run_id: str  # the run that ended last
    usd_per_hour: float | None  # that run's price × its GPUs: what idling costs


def machine_idle(*, host: str, root: Path | None = None) -> Idle | None:
    """How long since the last GPU run of `host` ended; None while one runs or none ran."""
    from engine.run.processes import supervisor_alive, trainer_processes
    from engine.run.rundir import FINAL, RunDir, iter_run_paths, read_json

    last: tuple[float, RunDir] | None = None
    for path in iter_run_paths(root):
        run = RunDir(path)
        try:
            state = read_json(run.state)
        except (OSError, ValueError):
            continue
        if state.get("host") not in (None, host):
            continue
        if state.get("status") not in FINAL:
            if supervisor_alive(state) or trainer_processes(state):
                return None  # a run is using the machine
            continue
        finished = _number(state.get("finished_at"))
        if finished is not None and (last is None or finished > last[0]):
            last = (finished, run)
    if last is None:
        return None
    finished, run = last
    spec = read_spec(run)
    if spec.get("device") == "cpu":
        return None  # the last run did not use the GPUs
    price = _number((spec.get("budget") or {}).get("price"))
    rate = price * billed_gpus(spec) if price is not None else None
    return Idle(finished, run.run_id, rate)


def money(value: float | None) -> str:
    """$0.0123, $1.23, $1,234"""
    if value is None:
        return "–"
    if value < 1:
        return f"${value:.4f}" if value < 0.01 else f"${value:.3f}"
    return f"${value:,.2f}" if value < 1000 else f"${value:,.0f}"


def _usd(rate: float | None, seconds: float | None) -> float | None:
    if rate is None or seconds is None:
        return None
    return round(seconds / 3600 * rate, 6)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None
