"""The dry run never crashes: this year's architectures run, or it declines in one line and
the analytic estimate stands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.models import ModelArch, resolve_model
from engine.plan.dryrun.coverage import small_config
from engine.plan.estimator import estimate_memory
from engine.plan.params import decode_floats, param_roles
from engine.training_config import TrainingConfig

pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


def saved_small(model_type: str, folder: Path) -> Path:
    """A small version of transformers' default config, saved by transformers itself."""
    config, _ = small_config(model_type)
    config.pop("transformers_version", None)
    hf = transformers.AutoConfig.for_model(**decode_floats(config))
    hf.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_llama4_text_trains_with_all_linear_lora_and_its_router_left_alone(tmp_path: Path) -> None:
    from engine.plan.dryrun.entry import dry_run

    arch = resolve_model(str(saved_small("llama4_text", tmp_path)))
    config = TrainingConfig(method="lora", seq_len=128)
    dry = dry_run(arch, config)  # PEFT wrapping the router (a Linear returning a tuple) failed
    param_roles(arch)
    analytic = estimate_memory(arch, config)
    assert dry.trainable_params == analytic.params.trainable
    assert dry.total_params == analytic.params.total


@pytest.mark.slow
def test_falcon_h1_dry_runs_from_the_config_transformers_saved(tmp_path: Path) -> None:
    from engine.plan.dryrun.entry import dry_run

    folder = saved_small("falcon_h1", tmp_path)
    assert "__float__" in (folder / "config.json").read_text()  # its time_step_limit [0, inf]
    arch = resolve_model(str(folder))
    dry = dry_run(arch, TrainingConfig(method="lora", seq_len=128))
    assert dry.peak_allocated_bytes > 0
    param_roles(arch)
    # PEFT refuses LoRA on Mamba's out_proj and conv1d: all-linear leaves them out, and so
    # does the count
    assert dry.trainable_params == estimate_memory(arch, TrainingConfig()).params.trainable


def test_a_dry_run_that_cannot_run_declines_in_one_line(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    from engine.plan.dryrun.entry import DryRunDeclined, dry_run_or_decline

    folder = saved_small("qwen3_moe", tmp_path)
    # fp32 master weights: transformers' grouped experts take bf16 only
    config = TrainingConfig(method="full", seq_len=128)
    declined = dry_run_or_decline(resolve_model(str(folder)), config)
    assert isinstance(declined, DryRunDeclined)
    assert "\n" not in declined.reason and "bf16" in declined.reason

    args = ["plan", "--model", str(folder), "--gpu", "h100", "--method", "full", "--batch", "1"]
    args += ["--grad-ckpt", "--seq-len", "128", "--dry-run"]
    run = subprocess.run(
        [sys.executable, "-m", "tui", *args], env=cli_env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "dry run declined" in run.stdout and "analytic estimate stands" in run.stdout
    out = subprocess.run(
        [sys.executable, "-m", "tui", *args, "--json"], env=cli_env, capture_output=True, text=True
    )
    data = json.loads(out.stdout)
    assert data["dry_run"]["analytic_estimate_stands"] and data["memory"]["allocated_gib"] > 0


# One architecture per kind of layer the analytic tier models apart from a dense decoder:
# Mamba-2 beside attention (Falcon-H1), gated delta-net linear attention with MoE (Qwen3-Next),
# a multimodal checkpoint whose towers text-only training never runs (Gemma 3), and attention
# that gets a mask or dropout: GPT-2 (attention dropout 0.1, which CPU's flash kernel lacks and
# CUDA's has) and Gemma 2 (eager attention with logit softcapping and a materialised mask).
# The dry run runs transformers' own PyTorch code, following CUDA's attention kernels, so its
# peak grows with the square of the sequence only where a GPU's does.
@pytest.mark.slow
@pytest.mark.parametrize(("model_type", "seq_len"), [("mixtral", 512), ("qwen3_moe", 128)])
def test_all_linear_lora_on_fused_experts_is_planned_as_peft_makes_it(
    model_type: str, seq_len: int
) -> None:
    """PEFT's all-linear also adapts transformers 5's fused 3-D experts and routers (what the
    expert and router Linears of transformers 4 were): the plan trains exactly what the run
    trains and holds what it holds."""
    from engine.plan.dryrun.entry import dry_run

    config, _ = small_config(model_type)
    arch = ModelArch(name=model_type, source="dir", config=config)
    roles = param_roles(arch)
    assert roles is not None and roles.parameter_lora > 0
    training = TrainingConfig(method="lora", seq_len=seq_len)
    dry = dry_run(arch, training)
    analytic = estimate_memory(arch, training)
    assert analytic.params.trainable == dry.trainable_params
    difference = (analytic.allocated_bytes - dry.peak_allocated_bytes) / dry.peak_allocated_bytes
    assert abs(difference) <= 0.10, f"analytic {difference:+.1%} vs dry run"
