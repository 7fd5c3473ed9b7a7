"""`--simulate SPEC`: valid and invalid specs, and the simulated snapshot."""

from __future__ import annotations

import pytest

from engine.errors import SimulateSpecError
from engine.machine.fakenvml import parse_simulate_spec
from engine.machine.hardware import detect_machine


@pytest.mark.parametrize(
    ("spec", "profile_id", "count"),
    [
        ("h100x8", "h100", 8),
        ("4090", "4090", 1),
        ("a100-80gbx2", "a100-80gb", 2),
        ("rtx4090", "4090", 1),
        ("rtx4090x2", "4090", 2),
        ("H100-SXM", "h100", 1),
        ("A100 80GB", "a100-80gb", 1),
        ("h100-pcie x4", "h100-pcie", 4),
        ("5090", "5090", 1),
        ("B200x8", "b200", 8),
    ],
)
def test_valid_specs(spec: str, profile_id: str, count: int) -> None:
    profiles = parse_simulate_spec(spec)
    assert len(profiles) == count
    assert {p.id for p in profiles} == {profile_id}


@pytest.mark.parametrize("spec", ["", "tpu-v5", "h100x0", "h100x999", "x8", "h1000x2"])
def test_invalid_specs_name_the_problem_and_the_fix(spec: str) -> None:
    with pytest.raises(SimulateSpecError) as info:
        parse_simulate_spec(spec)
    assert info.value.fix and ("h100" in info.value.fix)


def test_simulated_machine_uses_profile_memory() -> None:
    snap = detect_machine("h100x8", topology=True)
    assert snap.backend == "simulated"
    assert len(snap.gpus) == 8
    assert all(g.profile_id == "h100" for g in snap.gpus)
    assert len({g.uuid for g in snap.gpus}) == 8
    assert snap.gpus[0].memory_total_bytes / 1024**3 == pytest.approx(79.6, abs=0.1)
    assert all(all(row) for row in snap.p2p)  # NVLink: every pair peer-capable
