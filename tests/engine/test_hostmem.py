"""Host RAM: what offload puts in CPU memory, per node, and plans that do not fit it."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from engine.machine.fakenvml import parse_simulate_spec
from engine.models import resolve_model
from engine.plan.estimator import GIB, estimate_memory
from engine.plan.hostmem import PROCESS_BASELINE_BYTES
from engine.plan.planner import Machine, PlanRequest, plan
from engine.training_config import TrainingConfig


def machine(spec: str, host_ram_gib: float = 0) -> Machine:
    profiles = parse_simulate_spec(spec)
    m = Machine(profiles[0], len(profiles), profiles[0].memory_total_bytes, False)
    if host_ram_gib:
        m = replace(m, host_ram_bytes=int(host_ram_gib * GIB), host_ram_source="--host-ram")
    return m


def test_zero_offload_puts_sixteen_bytes_per_parameter_in_the_nodes_ram() -> None:
    arch = resolve_model("llama-3.1-8b")
    config = TrainingConfig(
        method="full", pure_bf16=True, num_gpus=8, sharding="zero3", offload="optimizer"
    )
    host = estimate_memory(arch, config).host
    params = estimate_memory(arch, config).params.trainable
    # Adam's two fp32 states, DeepSpeed's fp32 master weights and fp32 gradients, pinned,
    # spread over the node's 8 processes, plus each process's own footprint.
    offloaded = host.per_node_bytes - 8 * PROCESS_BASELINE_BYTES
    assert offloaded == pytest.approx(16 * params, rel=0.001)
    assert host.pinned_bytes * 8 == pytest.approx(16 * params, rel=0.001)
    none = estimate_memory(arch, config.with_changes(offload="none")).host
    assert none.per_node_bytes == 8 * PROCESS_BASELINE_BYTES and not none.pinned


def test_parameter_offload_adds_the_weights_and_fsdp_keeps_gradients_there_too() -> None:
    arch = resolve_model("llama-3.1-8b")
    base = TrainingConfig(method="full", pure_bf16=True, num_gpus=8)
    zero3 = estimate_memory(arch, base.with_changes(sharding="zero3", offload="optimizer"))
    zero3_params = estimate_memory(arch, base.with_changes(sharding="zero3", offload="params"))
    weights = zero3.params.total * 2  # bf16
    assert zero3_params.host.per_node_bytes - zero3.host.per_node_bytes == pytest.approx(
        weights, rel=0.001
    )
    fsdp = estimate_memory(arch, base.with_changes(sharding="fsdp", offload="params"))
    assert set(fsdp.host.pinned) == {"weights", "gradients"}
    assert "optimizer_states" in fsdp.host.pageable  # the optimizer steps on the CPU
    # what went to the host left the GPU
    on_gpu = estimate_memory(arch, base.with_changes(sharding="fsdp"))
    assert fsdp.device_bytes < on_gpu.device_bytes


def test_deepseek_v3_on_8xh100_never_recommends_more_host_ram_than_the_node_has(
    tmp_path: Path,
) -> None:
    transformers = pytest.importorskip("transformers")
    transformers.AutoConfig.for_model("deepseek_v3").save_pretrained(tmp_path)
    arch = resolve_model(str(tmp_path))

    roomy = plan(PlanRequest(arch, machine("h100x8")))  # the profile's 256 GiB per GPU
    assert roomy.best is not None and roomy.best.fits
    assert roomy.best.memory.host.per_node_bytes > 512 * GIB  # only offload makes it fit

    tight = plan(PlanRequest(arch, machine("h100x8", host_ram_gib=512)))
    recommended = [c for c in (tight.best, *tight.alternatives) if c is not None and c.fits]
    assert all(c.memory.host.per_node_bytes <= 512 * GIB for c in recommended)
    if tight.best is None:
        assert any("host RAM" in s and "512 GiB" in s for s in tight.suggestions)


def test_the_cli_takes_host_ram_and_shows_it_beside_gpu_memory(cli_env: dict[str, str]) -> None:
    base = [sys.executable, "-m", "tui", "plan", "--model", "llama-3.1-8b", "--simulate", "h100x8"]
    out = subprocess.run(
        [*base, "--host-ram", "512", "--json"], env=cli_env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout)
    assert data["gpu"]["host_ram_gib"] == 512 and data["gpu"]["host_ram_source"] == "--host-ram"
    assert data["memory"]["host"]["node_ram_gib"] == 512 and data["memory"]["host"]["fits"]
    assert data["memory"]["host"]["per_node_gib"] >= 8 * PROCESS_BASELINE_BYTES / GIB
    text = subprocess.run([*base, "--host-ram", "512"], env=cli_env, capture_output=True, text=True)
    assert "host RAM per node" in text.stdout and "of 512 GiB" in text.stdout
    bad = subprocess.run([*base, "--host-ram", "-4"], env=cli_env, capture_output=True, text=True)
    assert bad.returncode == 2 and "--host-ram" in bad.stderr and "Traceback" not in bad.stderr
