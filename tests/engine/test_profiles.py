"""Every profile file parses, has every field, and resolves the spellings users type."""

from __future__ import annotations

import re
from typing import Any

import pytest

from profiles import (
    MODEL_CONFIG_REQUIRED,
    ProfileError,
    find_gpu_profile,
    gpu_profiles,
    model_profiles,
    parse_gpu_profiles,
    parse_model_profiles,
)

REQUIRED_GPU_IDS = {
    "t4", "a10g", "l4", "l40s", "3090", "4090", "5090",
    "a100-40gb", "a100-80gb", "h100", "h100-pcie", "h200", "b200",
}  # fmt: skip
URL = re.compile(r"^https?://\S+$")


def test_gpu_profiles_cover_the_common_rentals() -> None:
    profiles = gpu_profiles()
    assert {p.id for p in profiles} >= REQUIRED_GPU_IDS
    for p in profiles:
        assert URL.match(p.source), p.id
        assert URL.match(p.price_source), p.id
        assert re.match(r"^\d{4}-\d{2}", p.price_date), p.id
        assert 8 <= p.memory_gb <= 300 and p.memory_total_mib > 0.85 * p.memory_gb * 1000
        assert p.bf16_tflops > 10 and p.memory_bandwidth_gbs > 100
        assert 0 < p.price_usd_per_hour < 20
        assert p.nvml_names, p.id
    assert not find_gpu_profile("t4").bf16  # type: ignore[union-attr]
    assert find_gpu_profile("h100").bf16  # type: ignore[union-attr]


def test_model_profiles_span_families_and_sizes() -> None:
    profiles = model_profiles()
    assert len(profiles) >= 20
    sizes = [p.params_b for p in profiles]
    assert min(sizes) <= 0.6 and max(sizes) >= 70
    types = {p.config["model_type"] for p in profiles}
    assert {"llama", "qwen2", "qwen3", "mistral", "mixtral", "gemma2", "phi3"} <= types
    assert any(p.config.get("num_local_experts") or p.config.get("num_experts") for p in profiles)
    for p in profiles:
        assert URL.match(p.source), p.id
        for key, kind in MODEL_CONFIG_REQUIRED.items():
            assert isinstance(p.config[key], kind), (p.id, key)


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("4090", "4090"),
        ("rtx4090", "4090"),
        ("RTX 4090", "4090"),
        ("NVIDIA GeForce RTX 4090", "4090"),
        ("A100 80GB", "a100-80gb"),
        ("H100-SXM", "h100"),
        ("h100", "h100"),
        ("H100 PCIe", "h100-pcie"),
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("Tesla T4", "t4"),
    ],
)
def test_gpu_spellings_resolve(spelling: str, expected: str) -> None:
    profile = find_gpu_profile(spelling)
    assert profile is not None and profile.id == expected


def _gpu_entry(**override: Any) -> dict[str, Any]:
    entry = {
        "id": "x", "name": "X", "aliases": [], "nvml_names": ["X"], "architecture": "Hopper",
        "compute_capability": "9.0", "memory_gb": 80, "memory_total_mib": 81559, "bf16": True,
        "bf16_tflops": 989.0, "fp16_tflops": 989.0, "memory_bandwidth_gbs": 3350.0,
        "interconnect": "NVLink", "nvlink_gbs": 900, "pcie_gen": 5, "tdp_w": 700,
        "price_usd_per_hour": 2.5, "price_date": "2025-10", "price_source": "https://a",
        "source": "https://b",
    }  # fmt: skip
    entry.update(override)
    return entry


def test_a_profile_missing_a_field_is_rejected_by_name() -> None:
    entry = _gpu_entry()
    del entry["memory_total_mib"]
    with pytest.raises(ProfileError, match="memory_total_mib"):
        parse_gpu_profiles({"gpu": [entry]})


def test_a_profile_with_a_wrong_type_is_rejected() -> None:
    with pytest.raises(ProfileError, match="bf16_tflops"):
        parse_gpu_profiles({"gpu": [_gpu_entry(bf16_tflops="fast")]})
    with pytest.raises(ProfileError, match="duplicate"):
        parse_gpu_profiles({"gpu": [_gpu_entry(), _gpu_entry()]})


def test_a_model_profile_without_architecture_fields_is_rejected() -> None:
    entry = {
        "id": "m", "hf_id": "org/m", "family": "f", "params_b": 1.0, "license": "mit",
        "source": "https://x", "config": {"model_type": "llama"},
    }  # fmt: skip
    with pytest.raises(ProfileError, match=r"architectures|hidden_size"):
        parse_model_profiles({"model": [entry]})


def test_every_model_profile_builds_a_transformers_config() -> None:
    transformers = pytest.importorskip("transformers")
    for p in model_profiles():
        config = transformers.AutoConfig.for_model(**p.config)
        assert config.hidden_size == p.config["hidden_size"], p.id
        assert config.num_hidden_layers == p.config["num_hidden_layers"], p.id
