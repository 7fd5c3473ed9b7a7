"""The plain records a `MetricsStore` hands to views, and the field parsing behind them.

`num` and `bad_loss` read the numbers of a raw JSONL record (the hot path: called per field),
`describe_event` turns a line of events.jsonl into one readable `Event`, `GpuHistory` holds one
GPU's series.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.monitor.series import Series


def num(value: Any) -> float | None:
    """A finite number, else None (bools are not numbers here). Hot: called per field."""
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is int:
        return float(value)
    return None


def step_of(value: Any) -> int | None:
    """A record's step as an int (the callback writes ints; a float step is truncated), else
    None."""
    step = num(value)
    return int(step) if step is not None else None


def bad_loss(value: Any) -> bool:
    """A loss that is present but not a finite number (the callback writes NaN as null)."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip().lower() in ("nan", "inf", "-inf", "infinity", "-infinity")
    return isinstance(value, float) and not math.isfinite(value)


def at_step(step: Any) -> str:
    """The words " at step N" for event and alert texts; empty when the step is unknown."""
    return f" at step {step}" if step is not None else ""


@dataclass(frozen=True)
class Event:
    t: float | None
    kind: str
    text: str
    severity: str = "info"  # info, warning, error


@dataclass
class GpuHistory:
    index: int
    used: Series
    util: Series
    temp: Series
    power: Series
    total_bytes: float | None = None
    peak_used_bytes: float = 0.0
    last: dict[str, Any] = field(default_factory=dict)

    def series(self) -> tuple[tuple[str, Series], ...]:
        """Each series with the key of a gpu.jsonl sample it is read from."""
        return (
            ("used", self.used),
            ("util", self.util),
            ("temp", self.temp),
            ("power", self.power),
        )


def describe_event(record: dict[str, Any]) -> Event:
    """A line of events.jsonl as one readable sentence."""
    kind = str(record.get("event", "?"))
    t = num(record.get("t"))
    at = at_step(record.get("step"))
    texts = {
        "created": f"run created ({record.get('launcher', '?')} launcher)",
        "launched": f"launcher started (pid {record.get('pid', '?')})",
        "launcher_failed": f"the launcher failed to start: {record.get('message', '')}",
        "train_begin": f"training started{at} of {record.get('max_steps', '?')}",
        "resumed": f"resumed{at}",
        "resume": f"resume requested from {Path(str(record.get('checkpoint', '?'))).name}",
        "checkpoint": f"checkpoint saved{at}",
        "save_requested": f"save requested{at}",
        "save_requested_by_user": "save-now requested",
        "stop_requested": f"stopping{at} (checkpoint, then exit)",
        "stop_requested_by_user": "stop requested",
        "stop_now": "stop --now: signalled the run",
        "nan": f"loss is {record.get('loss', 'NaN')}{at}: training stopped",
        "oom": f"out of GPU memory{at}",
        "train_end": f"training ended{at}" + (" (stopped)" if record.get("stopped") else ""),
        "exited": f"exited with code {record.get('returncode', '?')}: {record.get('status', '?')}",
        "speed_stored": (
            f"speed remembered for later plans (measured/model x{record['ratio']:.2f})"
            if isinstance(record.get("ratio"), (int, float))
            else f"speed not remembered: {record.get('not_stored', '?')}"
        ),
    }
    failed = kind == "exited" and record.get("status") == "failed"
    severity = "info"
    if failed or kind in ("nan", "oom", "launcher_failed"):
        severity = "error"
    elif kind.startswith("stop"):
        severity = "warning"
    text = texts.get(kind)
    if text is None:
        extra = " ".join(f"{k}={v}" for k, v in record.items() if k not in ("t", "event"))
        text = f"{kind} {extra}".strip()
    return Event(t=t, kind=kind, text=text, severity=severity)
