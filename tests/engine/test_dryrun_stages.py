"""The estimator's DPO memory agrees with the dry run of TRL's DPO step within 10%.

The dry run (engine/plan/dryrun/stages.py) runs what DPOTrainer runs on fake tensors: chosen and
rejected in one batch through TRL's fused LM head, then the reference forward with no grad
while the policy's activations are held (adapters disabled with LoRA/QLoRA; a frozen copy of the
weights for a full fine-tune). Three setups where a different phase decides: LoRA without
checkpointing (the reference forward on top of the policy's activations), QLoRA with
checkpointing (the recompute), and a mixed-precision full fine-tune whose reference copy is
fp32 like its master weights (the optimizer step); and ORPO once (full logits, no reference).
Numbers in docs/runtime.md.
"""

from __future__ import annotations

import pytest

from engine.models import resolve_model
from engine.plan.estimator import estimate_memory
from engine.training_config import TrainingConfig

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("trl")

SETUPS = [
    ("llama-3.2-1b", TrainingConfig(stage="dpo", method="lora", seq_len=512, batch=2,
                                    grad_ckpt=False)),
    ("qwen2.5-0.5b", TrainingConfig(stage="dpo", method="qlora", targets=("q_proj", "v_proj"),
                                    seq_len=512, batch=2)),
    ("qwen2.5-0.5b", TrainingConfig(stage="dpo", method="full", seq_len=256, batch=2)),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("model", "config"), SETUPS, ids=("lora", "qlora", "full-copy"))
def test_dpo_estimate_and_dry_run_agree(model: str, config: TrainingConfig) -> None:
    from engine.plan.dryrun.entry import dry_run

    arch = resolve_model(model)
    analytic = estimate_memory(arch, config)
    dry = dry_run(arch, config)
    assert dry.trainable_params == analytic.params.trainable
    difference = (analytic.allocated_bytes - dry.peak_allocated_bytes) / dry.peak_allocated_bytes
    assert abs(difference) <= 0.10, f"analytic {difference:+.1%} vs dry run"
    # the reference forward is a phase of both, and they agree on it too
    ours, theirs = analytic.phase_bytes["reference_forward"], dry.phase_peaks["reference_forward"]
    assert abs(ours - theirs) <= 0.10 * theirs, f"reference forward {ours / theirs - 1:+.1%}"
    if config.method == "full":  # the frozen copy is counted by both, in fp32 like the policy
        assert analytic.breakdown["reference_weights"] == 4 * analytic.params.total
        assert dry.persistent_bytes >= 4 * 2 * analytic.params.total  # policy + its copy


@pytest.mark.slow
def test_orpo_estimate_and_dry_run_agree() -> None:
    """ORPO has no reference and no fused head: the full logits in fp32 and its NLL term."""
    from engine.plan.dryrun.entry import dry_run

    arch = resolve_model("llama-3.2-1b")
    config = TrainingConfig(stage="orpo", method="lora", seq_len=512, batch=2, grad_ckpt=False)
    analytic = estimate_memory(arch, config)
    dry = dry_run(arch, config)
    assert "reference_forward" not in dry.phase_peaks
    assert "reference_forward" not in analytic.phase_bytes
    difference = (analytic.allocated_bytes - dry.peak_allocated_bytes) / dry.peak_allocated_bytes
    assert abs(difference) <= 0.10, f"analytic {difference:+.1%} vs dry run"
