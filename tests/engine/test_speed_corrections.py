"""A running job's measured speed corrects the next plan of the same kind, and says so."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from engine.models import resolve_model
from engine.monitor.store import MetricsStore
from engine.plan.corrections import SpeedKey, load_speed_corrections
from engine.plan.planner import Machine, PlanRequest, plan
from engine.plan.report import plan_to_dict
from engine.run.callbacks import make_callback
from engine.run.probe import measured_tokens_per_s
from engine.run.rundir import create_run_dir, write_json_atomic
from engine.run.spec import RunSpec
from profiles import find_gpu_profile

PINNED = {"method": "lora", "batch": 4, "grad_ckpt": True, "seq_len": 2048}


def _machine() -> Machine:
    gpu = find_gpu_profile("a100-80gb")
    assert gpu is not None
    return Machine(gpu, 1, gpu.memory_total_bytes, False)


def test_measured_speed_skips_warm_up_and_needs_enough_intervals() -> None:
    assert measured_tokens_per_s([50.0, 900.0, 1000.0, 1010.0]) is None
    assert measured_tokens_per_s([50.0, 900.0, 1000.0, 1010.0, 990.0]) == 1000.0


def test_a_run_s_measured_speed_corrects_the_next_plan(tmp_path: Path) -> None:
    arch = resolve_model("llama-3.2-1b")
    before = plan(PlanRequest(arch, _machine(), pinned=PINNED)).best
    assert before is not None and before.speed_correction is None
    low, high = before.tokens_per_s_band
    assert low < before.tokens_per_s < high
    short, long = before.eta_band
    assert short < before.eta_s < long

    # A run of that setup, logging 1.3x the planned speed (a faster GPU than its datasheet).
    run = create_run_dir("speed")
    spec = RunSpec(model="llama-3.2-1b", data=str(tmp_path / "d.jsonl"), training=before.config)
    run.spec.write_text(spec.to_yaml(), encoding="utf-8")
    planned = before.tokens_per_s
    write_json_atomic(run.plan, {"gpu": "a100-80gb", "gpu_count": 1, "tokens_per_s": planned})
    write_json_atomic(run.state, {"status": "running", "plan_summary": {}})
    now = time.time()
    with run.metrics.open("w", encoding="utf-8") as fh:
        for step in range(1, 15):
            rate = 1.3 * planned if step > 2 else 0.2 * planned
            fh.write(json.dumps({"t": now + step, "step": step, "loss": 1.0, "tokens_per_s": rate}))
            fh.write("\n")
    # The trainer's callback sees the same intervals as it logs them and remembers the speed
    # once it is steady; a dashboard only shows what was remembered.
    callback = make_callback(run)
    for step in range(1, 15):
        callback._remember_speed(1.3 * planned if step > 2 else 0.2 * planned)
    store = MetricsStore(run)
    store.refresh(now + 20)
    assert store.planned_tokens_per_s == pytest.approx(planned, rel=1e-3)
    assert store.measured_tokens_per_s == pytest.approx(1.3 * planned, rel=1e-3)
    assert store.speed_stored is not None and "ratio" in store.speed_stored
    assert sum('"speed_stored"' in line for line in run.events.read_text().splitlines()) == 1

    key = SpeedKey(arch.model_type, "lora", "a100-80gb", 1).as_str()
    assert load_speed_corrections()[key].ratio == pytest.approx(1.3, rel=0.01)
    result = plan(PlanRequest(arch, _machine(), pinned=PINNED))
    after = result.best
    assert after is not None
    assert after.speed_correction == pytest.approx(1.3, rel=0.01)
    assert after.tokens_per_s == pytest.approx(1.3 * planned, rel=0.01)
    assert after.eta_s == pytest.approx(before.eta_s / 1.3, rel=0.01)
    report = plan_to_dict(result)
    assert report["speed_correction"] == pytest.approx(1.3, rel=0.01)
    assert report["eta_band_s"][0] < report["eta_s"] < report["eta_band_s"][1]
    # Another GPU count is another kind: not corrected.
    other = plan(
        PlanRequest(arch, _machine(), pinned={**PINNED, "num_gpus": 2, "sharding": "fsdp"})
    )
    assert other.best is not None and other.best.speed_correction is None
