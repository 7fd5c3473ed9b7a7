"""The probe's decisions: how the micro-batch shrinks, and what a measurement reports."""

from __future__ import annotations

from engine.run.probe import probe_result, shrunk_spec
from engine.run.spec import RunSpec
from engine.training_config import TrainingConfig


def test_shrinking_keeps_the_effective_batch_and_stops_at_one() -> None:
    spec = RunSpec(model="m", data="d", training=TrainingConfig(batch=8, grad_accum=2))
    smaller = shrunk_spec(spec)
    assert smaller is not None
    assert (smaller.training.batch, smaller.training.grad_accum) == (4, 4)
    assert smaller.training.effective_batch == spec.training.effective_batch
    one = RunSpec(model="m", data="d", training=TrainingConfig(batch=1))
    assert shrunk_spec(one) is None


def test_a_probe_compares_with_the_plan_and_flags_a_full_card() -> None:
    gib = 1024**3
    result = probe_result(int(22 * gib), int(24 * gib), {"allocated_gib": 20.0, "gpu": "4090"})
    assert result["ratio"] == 1.1
    assert result["too_close"] is False
    close = probe_result(int(23.5 * gib), int(24 * gib), {})
    assert close["too_close"] is True and "ratio" not in close
