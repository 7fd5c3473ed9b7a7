"""The planner: what fits, what is fastest, what would fit, and remembered corrections."""

from __future__ import annotations

import pytest

from engine.machine.fakenvml import parse_simulate_spec
from engine.models import resolve_model
from engine.plan.corrections import CorrectionKey, correction_for, store_correction
from engine.plan.planner import Machine, PlanRequest, plan, throughput_tokens_per_s
from engine.training_config import TrainingConfig


def machine(spec: str) -> Machine:
    profiles = parse_simulate_spec(spec)
    return Machine(profiles[0], len(profiles), profiles[0].memory_total_bytes, False)


def test_the_recommendation_fits_and_is_the_fastest_that_does() -> None:
    result = plan(PlanRequest(resolve_model("llama-3.1-8b"), machine("a100-80gb")))
    assert result.best is not None and result.best.fits
    limit = 0.9 * machine("a100-80gb").memory_bytes
    assert result.best.memory.device_bytes <= limit
    assert all(result.best.tokens_per_s >= alt.tokens_per_s for alt in result.alternatives)
    assert {alt.config.method for alt in result.alternatives} | {result.best.config.method} >= {
        "lora",
        "qlora",
    }


def test_the_effective_batch_is_held_constant() -> None:
    result = plan(PlanRequest(resolve_model("qwen2.5-1.5b"), machine("h100x2"), effective_batch=32))
    for c in (result.best, *result.alternatives):
        assert c is not None
        assert c.config.batch * c.config.grad_accum * c.config.num_gpus == 32


def test_a_tighter_headroom_never_picks_a_bigger_plan() -> None:
    arch = resolve_model("llama-3.1-8b")
    loose = plan(PlanRequest(arch, machine("4090"), headroom=0.95)).best
    tight = plan(PlanRequest(arch, machine("4090"), headroom=0.6)).best
    assert loose is not None and tight is not None
    assert tight.memory.device_bytes <= 0.6 * machine("4090").memory_bytes
    assert tight.memory.device_bytes <= loose.memory.device_bytes


def test_when_nothing_fits_it_says_what_would() -> None:
    request = PlanRequest(resolve_model("qwen2.5-72b"), machine("4090"), pinned={"method": "full"})
    result = plan(request)
    assert result.best is None
    assert result.suggestions
    text = " ".join(result.suggestions)
    assert "qlora" in text.lower() or "GPU" in text


def test_throughput_grows_with_gpus_and_drops_with_quantisation() -> None:
    arch = resolve_model("llama-3.1-8b")
    one, eight = machine("h100"), machine("h100x8")
    lora = TrainingConfig(method="lora", batch=4)
    assert throughput_tokens_per_s(arch, lora.with_changes(num_gpus=8), eight) > 6 * (
        throughput_tokens_per_s(arch, lora, one)
    )
    qlora = lora.with_changes(method="qlora")
    assert throughput_tokens_per_s(arch, qlora, one) < throughput_tokens_per_s(arch, lora, one)


def test_a_stored_probe_correction_is_applied_to_later_plans() -> None:
    arch = resolve_model("llama-3.2-1b")
    pinned = {"method": "lora", "batch": 4, "grad_ckpt": True}
    before = plan(PlanRequest(arch, machine("l4"), pinned=pinned)).best
    assert before is not None
    key = CorrectionKey(arch.model_type, "lora", "l4", "sdpa")
    ratio = store_correction(
        key, before.memory.allocated_bytes, int(before.memory.allocated_bytes * 1.2)
    )
    assert correction_for(key) == pytest.approx(1.2, rel=1e-3) == pytest.approx(ratio, rel=1e-3)
    after = plan(PlanRequest(arch, machine("l4"), pinned=pinned)).best
    assert after is not None
    assert after.memory.allocated_bytes == pytest.approx(
        before.memory.allocated_bytes * 1.2, rel=1e-3
    )
    with pytest.raises(ValueError, match="implausible"):
        store_correction(key, 100, 1000)
