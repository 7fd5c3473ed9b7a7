"""The speed model against measured runs (tests/data/reference/throughput_measured.csv).

Comparable rows: primary measurements on stock HF Trainer / PyTorch (no fused kernels) whose
token counts are the tokens the GPU computed. The error table in docs/estimator.md comes from
the same functions (benchmarks/throughput_accuracy.py).
"""

from __future__ import annotations

import math
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from engine.models import resolve_model
from engine.plan.reference import (
    ThroughputRow,
    compare_throughput,
    speed_summary,
    throughput_rows,
)
from engine.plan.throughput import (
    DEFAULT_THROUGHPUT_CALIBRATION,
    SPEED_BAND,
    step_time,
    tokens_per_s,
)
from engine.training_config import TrainingConfig
from profiles import find_gpu_profile

ROOT = Path(__file__).resolve().parents[2]
CSV = ROOT / "tests" / "data" / "reference" / "throughput_measured.csv"
sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.fixture(scope="module")
def comparable() -> list[ThroughputRow]:
    rows, _ = throughput_rows(CSV)
    return [r for r in rows if r.comparable]


def test_median_error_on_comparable_rows_is_within_15_percent(
    comparable: list[ThroughputRow],
) -> None:
    assert len(comparable) >= 90
    summary = speed_summary(compare_throughput(comparable))
    print(
        f"\nspeed model on {summary['rows']:.0f} comparable rows: median |error| "
        f"{summary['median']:.1%}, p90 {summary['p90']:.1%}, max {summary['max']:.1%}"
    )
    assert summary["median"] <= 0.15
    assert abs(summary["bias"]) <= 0.05  # neither systematically fast nor slow


def test_rows_with_other_stacks_or_fused_kernels_are_not_comparable() -> None:
    rows, excluded = throughput_rows(CSV)
    by_id = {r.row_id: r for r in rows}
    assert not by_id["fms-0424"].comparable  # token count from the first micro-batch
    assert all(not r.comparable for r in rows if r.stack in ("torchtune", "NeMo (TE kernels)"))
    assert all("foak" not in r.why_not for r in rows)
    assert any("re-measurement" in why for _, why in excluded)


def test_constants_and_band_are_what_the_fit_gives(comparable: list[ThroughputRow]) -> None:
    """The constants in code sit at the fit's optimum and the band is the fit's residuals:
    no hand-tuned number."""
    from fit_throughput import NAMES, fit, log_errors, quantile

    refit = fit(comparable, DEFAULT_THROUGHPUT_CALIBRATION)
    for name in NAMES:
        ours, theirs = getattr(DEFAULT_THROUGHPUT_CALIBRATION, name), getattr(refit, name)
        assert ours == pytest.approx(theirs, rel=0.05), name
    assert len(NAMES) == len(fields(DEFAULT_THROUGHPUT_CALIBRATION)) == 4
    ratios = [math.exp(-e) for e in log_errors(comparable, DEFAULT_THROUGHPUT_CALIBRATION)]
    assert SPEED_BAND.low == pytest.approx(quantile(ratios, 0.1), abs=0.02)
    assert SPEED_BAND.high == pytest.approx(quantile(ratios, 0.9), abs=0.02)


def test_out_of_sample_error_with_each_source_held_out(comparable: list[ThroughputRow]) -> None:
    from fit_throughput import describe, fit, log_errors

    held: list[float] = []
    for stack in sorted({r.stack for r in comparable}):
        train = [r for r in comparable if r.stack != stack]
        test = [r for r in comparable if r.stack == stack]
        held += log_errors(test, fit(train, DEFAULT_THROUGHPUT_CALIBRATION))
    print(f"\nout of sample (each source held out): {describe(held)}")
    median = sorted(abs(math.exp(e) - 1) for e in held)[len(held) // 2]
    assert median <= 0.20


def test_physics_orders_setups_the_way_gpus_do() -> None:
    arch = resolve_model("llama-3.1-8b")
    a100, h100 = find_gpu_profile("a100-80gb"), find_gpu_profile("h100")
    assert a100 is not None and h100 is not None
    lora = TrainingConfig(method="lora", batch=4, seq_len=2048)
    full = lora.with_changes(method="full")
    qlora = lora.with_changes(method="qlora")
    # Weight gradients cost a third more matmul work; dequantising costs QLoRA time.
    assert tokens_per_s(arch, full, a100) < tokens_per_s(arch, lora, a100)
    assert tokens_per_s(arch, qlora, a100) < tokens_per_s(arch, lora, a100)
    assert tokens_per_s(arch, lora, h100) > 2 * tokens_per_s(arch, lora, a100)
    # Recompute adds a forward; a tiny micro-batch does not fill the GPU.
    assert tokens_per_s(arch, lora.with_changes(grad_ckpt=False), a100) > tokens_per_s(
        arch, lora, a100
    )
    tiny = lora.with_changes(batch=1, seq_len=128)
    assert tokens_per_s(arch, tiny, a100) < 0.5 * tokens_per_s(arch, lora, a100)
    # Sharding over PCIe costs more than over NVLink; the terms say where the time goes.
    l40s = find_gpu_profile("l40s")
    assert l40s is not None
    sharded = full.with_changes(num_gpus=4, sharding="fsdp", batch=1)
    assert step_time(arch, sharded, l40s).comm_s > step_time(arch, sharded, h100).comm_s
    single = step_time(arch, full, a100)
    assert single.comm_s == 0 and single.optimizer_s > 0 and single.compute_s > single.memory_s
