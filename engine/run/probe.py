"""The probe: the first real steps of a GPU run check the plan.

After `PROBE_STEPS` steps the trainer compares torch's measured peak with the plan's estimate,
stores the ratio as a correction for this (architecture, method, GPU, attention), and warns
when the peak is too close to the card. If the run runs out of memory before its first
checkpoint, the supervisor halves the micro-batch (doubling gradient accumulation, so the
effective batch is unchanged) and starts it again, up to `MAX_SHRINKS` times.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from engine.run.spec import RunSpec

PROBE_STEPS = 3
MAX_SHRINKS = 3
TOO_CLOSE = 0.95  # share of the card's memory


def shrunk_spec(spec: RunSpec) -> RunSpec | None:
    """The same run with half the micro-batch and twice the accumulation; None at batch 1."""
    t = spec.training
    if t.batch <= 1:
        return None
    training = replace(t, batch=t.batch // 2, grad_accum=t.grad_accum * 2)
    return spec.with_changes(training=training)


def probe_result(measured: int, total: int, plan: dict[str, Any]) -> dict[str, Any]:
    """What the probe saw, for events.jsonl and state.json."""
    result: dict[str, Any] = {"measured_allocated_bytes": measured, "device_total_bytes": total}
    predicted = plan.get("allocated_gib")
    if isinstance(predicted, (int, float)) and predicted > 0:
        result["predicted_allocated_bytes"] = int(predicted * 1024**3)
        result["ratio"] = round(measured / (predicted * 1024**3), 4)
    result["too_close"] = total > 0 and measured > TOO_CLOSE * total
    return result
