"""The analytic estimator: physics a user can check by hand; every knob moves it the right way."""

from __future__ import annotations

import pytest

from engine.models import resolve_model
from engine.plan.estimator import GIB, count_params, estimate_memory
from engine.training_config import ConfigError, TrainingConfig
from profiles import model_profiles


def test_param_counts_match_the_published_sizes() -> None:
    for profile in model_profiles():
        if profile.id == "gemma-3-4b":
            continue  # the profile holds the text model only; 4.3B includes the vision tower
        arch = resolve_model(profile.id)
        counted = count_params(arch).total / 1e9
        assert counted == pytest.approx(profile.params_b, rel=0.04), profile.id


def test_full_finetune_pure_bf16_peaks_at_ten_bytes_per_param() -> None:
    arch = resolve_model("mistral-7b-v0.3")
    config = TrainingConfig(method="full", pure_bf16=True, batch=1, seq_len=512)
    estimate = estimate_memory(arch, config)
    assert estimate.peak_phase == "optimizer_step"
    params = estimate.params.total
    assert estimate.allocated_bytes == pytest.approx(10 * params, rel=0.01)
    assert estimate.reserved_bytes > estimate.allocated_bytes
    assert estimate.device_bytes > estimate.reserved_bytes


def test_lora_trainable_params_follow_rank_and_targets() -> None:
    arch = resolve_model("llama-3.1-8b")
    qv = count_params(arch, TrainingConfig(rank=8, targets=("q_proj", "v_proj")))
    # q: 4096->4096, v: 4096->1024, 32 layers
    assert qv.trainable == 32 * 8 * ((4096 + 4096) + (4096 + 1024))
    assert count_params(arch, TrainingConfig(rank=16, targets=("q_proj", "v_proj"))).trainable == (
        2 * qv.trainable
    )
    dora = count_params(arch, TrainingConfig(rank=8, targets=("q_proj", "v_proj"), dora=True))
    assert dora.trainable == qv.trainable + 32 * (4096 + 1024)


def _peak(model: str, **knobs: object) -> float:
    return estimate_memory(resolve_model(model), TrainingConfig(**knobs).validate()).device_bytes


@pytest.mark.parametrize(
    ("smaller", "larger"),
    [
        ({"method": "qlora"}, {"method": "lora"}),
        ({"method": "lora"}, {"method": "full"}),
        ({"seq_len": 1024}, {"seq_len": 4096}),
        ({"batch": 1}, {"batch": 8}),
        ({"grad_ckpt": True, "seq_len": 4096}, {"grad_ckpt": False, "seq_len": 4096}),
        ({"attn": "sdpa", "grad_ckpt": False}, {"attn": "eager", "grad_ckpt": False}),
        ({"rank": 8}, {"rank": 256}),
        ({"method": "full", "optim": "adamw_8bit"}, {"method": "full", "optim": "adamw_torch"}),
        ({"method": "full", "pure_bf16": True}, {"method": "full"}),
        (
            {"method": "full", "num_gpus": 8, "sharding": "zero3"},
            {"method": "full", "num_gpus": 8, "sharding": "zero2"},
        ),
        (
            {"method": "full", "num_gpus": 8, "sharding": "zero3", "offload": "optimizer"},
            {"method": "full", "num_gpus": 8, "sharding": "zero3"},
        ),
        ({"method": "qlora", "double_quant": True}, {"method": "qlora", "double_quant": False}),
    ],
)
def test_every_knob_moves_memory_the_right_way(
    smaller: dict[str, object], larger: dict[str, object]
) -> None:
    assert _peak("llama-3.1-8b", **smaller) < _peak("llama-3.1-8b", **larger)


def test_qlora_weights_are_about_half_a_byte_per_param() -> None:
    arch = resolve_model("llama-3.3-70b")
    estimate = estimate_memory(arch, TrainingConfig(method="qlora", seq_len=256))
    linear = estimate.params.linear
    assert estimate.breakdown["weights"] == pytest.approx(
        0.5 * linear * 1.016 + 2 * (estimate.params.total - linear - estimate.params.lora),
        rel=0.02,
    )


def test_offload_moves_states_to_host_ram() -> None:
    arch = resolve_model("llama-3.1-8b")
    config = TrainingConfig(method="full", num_gpus=4, sharding="zero3", offload="optimizer")
    estimate = estimate_memory(arch, config)
    assert estimate.host_bytes > 8e9 * 12 / 4 * 0.9
    assert estimate.breakdown["optimizer_states"] == 0


def test_the_breakdown_adds_up_to_the_device_peak() -> None:
    estimate = estimate_memory(resolve_model("qwen2.5-7b"), TrainingConfig(batch=4, seq_len=4096))
    assert sum(estimate.breakdown.values()) == pytest.approx(estimate.device_bytes, rel=1e-6)
    assert estimate.peak_phase in ("forward_backward", "recompute", "optimizer_step")
    assert 1 * GIB < estimate.device_bytes < 80 * GIB


def test_a_probe_correction_scales_the_estimate() -> None:
    arch = resolve_model("llama-3.2-1b")
    base = estimate_memory(arch, TrainingConfig())
    corrected = estimate_memory(arch, TrainingConfig(), correction=1.1)
    assert corrected.allocated_bytes == pytest.approx(base.allocated_bytes * 1.1, rel=1e-6)


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"rank": 0}, "--rank"),
        ({"method": "qlora", "dtype": "fp32"}, "qlora"),
        ({"method": "qlora", "sharding": "zero3", "offload": "params", "num_gpus": 2}, "ZeRO-3"),
        ({"offload": "optimizer"}, "--offload"),
        ({"targets": ("q_proj", "query")}, "query"),
        ({"batch": 0}, "--batch"),
        ({"method": "dpo"}, "--method"),
    ],
)
def test_impossible_configs_name_the_field(knobs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainingConfig(**knobs).validate()  # type: ignore[arg-type]
