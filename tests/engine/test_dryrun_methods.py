"""Each PEFT-family method: the analytic estimate (engine/plan/method_memory.py) and the dry
run (the method set up as a real run sets it up, on fake tensors) agree within 10% on the peak
and exactly on the trainable parameters. Qwen2.5-0.5B has q/k/v biases (BitFit); PEFT's
adaption prompt needs a Llama (Llama-3.2-1B). The measured rows are in docs/methods.md."""

from __future__ import annotations

import pytest

from engine.models import resolve_model
from engine.plan.estimator import MemoryEstimate, estimate_memory
from engine.training_config import TrainingConfig

pytest.importorskip("torch")
pytest.importorskip("peft")

SHORT = {"seq_len": 256, "batch": 2}
SETUPS = [
    ("qwen2.5-0.5b", TrainingConfig(method="prefix", grad_ckpt=False, **SHORT)),
    ("qwen2.5-0.5b", TrainingConfig(method="prompt", grad_ckpt=False, **SHORT)),
    ("qwen2.5-0.5b", TrainingConfig(method="ptuning", **SHORT)),
    ("qwen2.5-0.5b", TrainingConfig(method="ia3", grad_ckpt=False, **SHORT)),
    ("qwen2.5-0.5b", TrainingConfig(method="bias", **SHORT)),
    ("qwen2.5-0.5b", TrainingConfig(method="freeze", grad_ckpt=False, **SHORT)),
    ("qwen2.5-0.5b", TrainingConfig(method="lora", base_bits=8, **SHORT)),
    ("llama-3.2-1b", TrainingConfig(method="llama-adapter", grad_ckpt=False, **SHORT)),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "config"), SETUPS, ids=[f"{c.method}-{c.base_bits}bit" for _, c in SETUPS]
)
def test_each_method_estimate_agrees_with_its_dry_run(model: str, config: TrainingConfig) -> None:
    from engine.plan.dryrun.entry import dry_run

    arch = resolve_model(model)
    analytic = estimate_memory(arch, config)
    dry = dry_run(arch, config)  # two steps: the second holds the optimizer states
    assert dry.trainable_params == analytic.params.trainable
    assert dry.total_params == pytest.approx(analytic.params.total, rel=0.01)
    difference = (analytic.allocated_bytes - dry.peak_allocated_bytes) / dry.peak_allocated_bytes
    assert abs(difference) <= 0.10, f"analytic {difference:+.1%} vs dry run"


def test_methods_differ_where_they_should() -> None:
    """What a user planning them sees: a frozen-base method holds the 16-bit weights and
    little else; bias / freeze hold fp32 master weights; an 8-bit base halves LoRA's weights;
    prompt tuning pays for its extra positions, freeze without checkpointing keeps only its
    top layers' activations."""
    arch = resolve_model("qwen2.5-0.5b")
    base = TrainingConfig(seq_len=1024, batch=4, grad_ckpt=False)

    def est(**changes: object) -> MemoryEstimate:
        return estimate_memory(arch, base.with_changes(**changes))

    lora, int8 = est(method="lora"), est(method="lora", base_bits=8)
    assert int8.breakdown["weights"] < 0.7 * lora.breakdown["weights"]
    assert est(method="bias").breakdown["weights"] > 1.9 * lora.breakdown["weights"]
    prompt, longer = est(method="prompt"), est(method="prompt", virtual_tokens=200)
    assert longer.breakdown["activations"] > 1.15 * prompt.breakdown["activations"]
    top = est(method="freeze", trainable_layers=2)
    every = est(method="freeze", trainable_layers=arch.num_layers)
    assert top.breakdown["activations"] < 0.2 * every.breakdown["activations"]


def test_dry_run_declines_bias_on_a_model_without_biases() -> None:
    from engine.plan.dryrun.entry import DryRunDeclined, dry_run_or_decline

    result = dry_run_or_decline(resolve_model("llama-3.2-1b"), TrainingConfig(method="bias"))
    assert isinstance(result, DryRunDeclined)
    assert "has none" in result.reason and "(BitFit)" in result.reason


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "freeze"])
def test_multimodal_model_runs_methods_that_count_its_layers(method: str) -> None:
    """Gemma 3 (image + text) keeps its decoder layers in the text config: LoRA and freeze
    tuning set up and run, training what the planner counts."""
    from engine.models import ModelArch
    from engine.plan.dryrun.coverage import small_config
    from engine.plan.dryrun.entry import DryRunDeclined, dry_run_or_decline
    from engine.plan.params import param_roles

    config, _ = small_config("gemma3")
    arch = ModelArch(name="gemma3-small", source="dir", config=config)
    param_roles(arch)  # the planner counts the real model (towers included), as `ftui plan` does
    training = TrainingConfig(method=method, seq_len=128, trainable_layers=1)
    dry = dry_run_or_decline(arch, training)
    assert not isinstance(dry, DryRunDeclined), dry.reason
    assert dry.trainable_params == estimate_memory(arch, training).params.trainable
