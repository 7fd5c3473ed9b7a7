"""The dry run (tier 2) and the analytic estimate (tier 1) agree within 10% on a chosen set.

The set spans LoRA with and without checkpointing, eager attention, QLoRA and a full
fine-tune on small real architectures (Qwen2.5-0.5B, Llama-3.2-1B); the 8B rows are in
benchmarks/dryrun_vs_analytic.py. Differences and their causes are in docs/estimator.md.
"""

from __future__ import annotations

import pytest

from engine.models import resolve_model
from engine.plan.estimator import estimate_memory
from engine.training_config import TrainingConfig

pytest.importorskip("torch")
pytest.importorskip("peft")

SETUPS = [
    ("qwen2.5-0.5b", TrainingConfig(method="lora", seq_len=512, batch=2)),
    ("qwen2.5-0.5b", TrainingConfig(method="full", pure_bf16=True, seq_len=256, batch=2)),
    ("qwen2.5-0.5b", TrainingConfig(method="qlora", seq_len=512, batch=2)),
    ("llama-3.2-1b", TrainingConfig(method="lora", targets=("q_proj", "v_proj"), rank=64,
                                    seq_len=512, batch=2, grad_ckpt=False, attn="eager")),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("model", "config"), SETUPS)
def test_dry_run_and_analytic_agree(model: str, config: TrainingConfig) -> None:
    from engine.plan.dryrun.entry import dry_run

    arch = resolve_model(model)
    analytic = estimate_memory(arch, config)
    dry = dry_run(arch, config)
    assert dry.trainable_params == analytic.params.trainable
    assert dry.total_params == pytest.approx(analytic.params.total, rel=0.01)
    difference = (analytic.allocated_bytes - dry.peak_allocated_bytes) / dry.peak_allocated_bytes
    assert abs(difference) <= 0.10, f"analytic {difference:+.1%} vs dry run"
