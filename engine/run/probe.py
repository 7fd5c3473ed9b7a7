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

from engine.run.rundir import RunDir
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


# -- speed -----------------------------------------------------------------------------------

# The first logging intervals hold compilation, allocator warm-up and the first dataloader
# fill; the measured speed is the median of the rest, once there are enough of them.
SPEED_WARMUP_INTERVALS = 2
SPEED_MIN_INTERVALS = 3
SPEED_STORE_INTERVALS = 10  # enough steady intervals to remember the speed for later plans


def measured_tokens_per_s(intervals: list[float]) -> float | None:
    """The run's steady tokens/s from its per-interval rates (metrics.jsonl `tokens_per_s`)."""
    steady = [v for v in intervals[SPEED_WARMUP_INTERVALS:] if v > 0]
    if len(steady) < SPEED_MIN_INTERVALS:
        return None
    steady.sort()
    middle = len(steady) // 2
    return steady[middle] if len(steady) % 2 else (steady[middle - 1] + steady[middle]) / 2


def remember_run_speed(run: RunDir, intervals: list[float]) -> dict[str, Any] | None:
    """Store a run's steady speed as a correction once it has `SPEED_STORE_INTERVALS` logged
    intervals (None before: not yet). What was stored, or why not, goes to events.jsonl. The
    trainer calls this (rank 0), so a run nobody watches corrects the next plan too."""
    if len(intervals) < SPEED_STORE_INTERVALS:
        return None
    measured = measured_tokens_per_s(intervals)
    if measured is None:
        return None
    from engine.errors import FtuiError
    from engine.run.rundir import read_json

    plan = read_json(run.plan)
    if not plan.get("gpu"):
        result: dict[str, Any] = {"not_stored": "the run has no GPU plan"}
    else:
        try:
            spec = RunSpec.from_yaml(run.spec.read_text(encoding="utf-8"))
        except (OSError, FtuiError) as exc:
            result = {"not_stored": f"no readable spec.yaml ({exc})"}
        else:
            result = store_measured_speed(spec, plan, measured)
    run.event("speed_stored", **result)
    return result


def store_measured_speed(spec: RunSpec, plan: dict[str, Any], measured: float) -> dict[str, Any]:
    """Remember measured / modelled tokens/s for this run's kind (architecture, method, GPU
    type, GPU count), so the next plan of that kind is corrected; what was stored, or why not.

    The ratio is against the speed model itself (not the plan's number, which may already
    carry an older correction)."""
    from engine.errors import FtuiError
    from engine.models import resolve_model
    from engine.plan.corrections import SpeedKey, store_speed_correction
    from engine.plan.throughput import tokens_per_s
    from profiles import find_gpu_profile

    gpu = find_gpu_profile(str(plan.get("gpu") or ""))
    if gpu is None:
        return {"not_stored": "the plan names no known GPU profile"}
    try:
        arch = resolve_model(spec.model_path or spec.model)
    except FtuiError as exc:
        return {"not_stored": exc.message}
    config = spec.training
    modelled = tokens_per_s(arch, config, gpu)
    key = SpeedKey(arch.model_type, config.method, gpu.id, config.num_gpus)
    result: dict[str, Any] = {
        "key": key.as_str(),
        "modelled_tokens_per_s": round(modelled, 1),
        "measured_tokens_per_s": round(measured, 1),
    }
    try:
        result["ratio"] = round(store_speed_correction(key, modelled, measured), 4)
    except ValueError as exc:
        result["not_stored"] = str(exc)
    return result
