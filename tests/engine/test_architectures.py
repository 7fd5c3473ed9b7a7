"""This year's architectures as transformers itself defines them: the planner's parameter
counts are the real model's, cached per config; a config transformers cannot build falls back
to the closed form and says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import FtuiError
from engine.machine.fakenvml import parse_simulate_spec
from engine.models import ModelArch, check_causal_lm, resolve_model
from engine.plan.estimator import count_params, estimate_memory
from engine.plan.params import closed_form_reason, hf_config, param_roles
from engine.plan.planner import Machine, PlanRequest, candidate_configs, plan
from engine.training_config import TrainingConfig

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# The issue's fifteen: transformers' own default config of each.
CURRENT_ARCHITECTURES = (
    "gpt_oss", "deepseek_v2", "deepseek_v3", "llama4_text", "qwen3_moe", "qwen3_next",
    "glm4_moe", "minimax_m2", "ernie4_5_moe", "falcon_h1", "gemma3_text", "phi3", "olmo2",
    "exaone4", "smollm3",
)  # fmt: skip


def saved_default_config(model_type: str, folder: Path, **overrides: object) -> Path:
    """transformers' default config of `model_type`, written the way transformers saves it."""
    config = transformers.AutoConfig.for_model(model_type, **overrides)
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    return folder


def meta_model_params(folder: Path) -> int:
    """Parameters of the model transformers builds from the folder, counted here directly."""
    import torch

    config = transformers.AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def machine(spec: str) -> Machine:
    profiles = parse_simulate_spec(spec)
    return Machine(profiles[0], len(profiles), profiles[0].memory_total_bytes, False)


@pytest.mark.parametrize("model_type", CURRENT_ARCHITECTURES)
def test_planned_parameter_count_is_the_real_models(model_type: str, tmp_path: Path) -> None:
    folder = saved_default_config(model_type, tmp_path / model_type)
    result = plan(PlanRequest(resolve_model(str(folder)), machine("h100x8")))
    chosen = result.best or result.alternatives[0]
    real = meta_model_params(folder)
    assert chosen.memory.params.total - chosen.memory.params.lora == pytest.approx(real, rel=0.005)
    assert not any("closed form" in note for note in chosen.memory.notes)


def test_the_count_is_cached_and_a_warm_plan_never_loads_torch(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    folder = saved_default_config("qwen3_moe", tmp_path / "qwen3-moe", num_hidden_layers=4)
    args = ["-m", "tui", "plan", "--model", str(folder), "--gpu", "h100", "--json"]
    cold = subprocess.run([sys.executable, *args], env=cli_env, capture_output=True, text=True)
    assert cold.returncode == 0, cold.stderr[-2000:]
    warm = subprocess.run(
        [sys.executable, "-X", "importtime", *args], env=cli_env, capture_output=True, text=True
    )
    assert warm.returncode == 0, warm.stderr[-2000:]
    loaded = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in warm.stderr.splitlines()
              if line.startswith("import time:") and "|" in line}  # fmt: skip
    assert not loaded & {"torch", "transformers"}, "a warm plan imported the ML stack"
    assert json.loads(warm.stdout)["model"]["params"] == json.loads(cold.stdout)["model"]["params"]
    assert json.loads(cold.stdout)["model"]["params"] == meta_model_params(folder)


def test_a_config_transformers_cannot_build_falls_back_and_says_so(tmp_path: Path) -> None:
    config = dict(
        model_type="acme_llama",  # no such model in transformers
        architectures=["AcmeLlamaForCausalLM"],
        hidden_size=1024, num_hidden_layers=4, num_attention_heads=16, num_key_value_heads=4,
        intermediate_size=2816, vocab_size=32000, tie_word_embeddings=False,
    )  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = plan(PlanRequest(resolve_model(str(tmp_path)), machine("l4")))
    chosen = result.best or result.alternatives[0]
    notes = " ".join(chosen.memory.notes)
    assert "parameter counts from the closed form" in notes and "acme_llama" in notes
    # the closed form still counts a llama: 2 x embeddings + 4 layers of attention and MLP
    per_layer = 2 * 1024 * 1024 + 2 * 1024 * 256 + 3 * 1024 * 2816 + 2 * 1024
    expected = 2 * 32000 * 1024 + 4 * per_layer + 1024
    assert chosen.memory.params.total - chosen.memory.params.lora == expected


# -- every causal LM of the installed transformers, small ------------------------------------


def _causal_lm_types() -> list[str]:
    from engine.plan.dryrun.coverage import causal_lm_types

    return causal_lm_types()


def _small_or_skip(model_type: str) -> dict[str, object]:
    from engine.plan.dryrun.coverage import small_config

    try:
        config, _ = small_config(model_type)
    except RuntimeError as exc:  # transformers cannot build it from its own defaults
        pytest.skip(str(exc).splitlines()[0][:200])
    try:
        check_causal_lm(config, model_type)
    except FtuiError as exc:  # an encoder or encoder-decoder: ftui does not plan it
        pytest.skip(exc.message)
    return config


@pytest.mark.parametrize("model_type", _causal_lm_types())
def test_every_causal_lm_is_counted_exactly(model_type: str) -> None:
    import torch

    config = _small_or_skip(model_type)
    arch = ModelArch(name=model_type, source="dir", config=config)
    roles = param_roles(arch)
    assert roles is not None, closed_form_reason(arch)
    with torch.device("meta"):  # built here, counted here
        model = transformers.AutoModelForCausalLM.from_config(hf_config(config))
    assert count_params(arch).total == sum(p.numel() for p in model.parameters())


# tests/engine/test_coverage.py dry-runs every architecture and compares the memory; this
# checks the dry run's trainable and frozen counts against ftui's for this year's fifteen
# (FTUI_EVERY_ARCHITECTURE=1: every causal LM transformers knows).
DRY_RUN_TYPES = (
    _causal_lm_types() if os.environ.get("FTUI_EVERY_ARCHITECTURE") else CURRENT_ARCHITECTURES
)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", DRY_RUN_TYPES)
def test_every_causal_lm_dry_runs_or_declines_in_one_line(model_type: str) -> None:
    from engine.plan.dryrun.entry import DryRunDeclined, dry_run_or_decline

    config = _small_or_skip(model_type)
    arch = ModelArch(name=model_type, source="dir", config=config)
    param_roles(arch)  # the planner counts the real model, as `ftui plan` does
    result = dry_run_or_decline(arch, TrainingConfig(method="lora", seq_len=32))
    if isinstance(result, DryRunDeclined):
        assert "\n" not in result.reason
        return
    counted = count_params(arch, TrainingConfig())
    assert result.trainable_params == counted.trainable
    assert result.total_params - result.trainable_params == counted.total - counted.lora


def test_a_model_without_gradient_checkpointing_is_estimated_without_it() -> None:
    from engine.plan.dryrun.coverage import small_config

    config, _ = small_config("ctrl")  # CTRLLMHeadModel cannot checkpoint
    arch = ModelArch(name="ctrl", source="dir", config=config)
    assert param_roles(arch) is not None
    asked = estimate_memory(arch, TrainingConfig(method="lora", seq_len=512, grad_ckpt=True))
    plain = estimate_memory(arch, TrainingConfig(method="lora", seq_len=512, grad_ckpt=False))
    assert asked.allocated_bytes == plain.allocated_bytes
    assert any("does not support gradient checkpointing" in note for note in asked.notes)
    # a model that can checkpoint keeps less with it
    config, _ = small_config("llama")
    llama = ModelArch(name="llama", source="dir", config=config)
    param_roles(llama)
    checkpointed = estimate_memory(llama, TrainingConfig(method="lora", seq_len=512))
    assert (
        checkpointed.allocated_bytes
        < estimate_memory(
            llama, TrainingConfig(method="lora", seq_len=512, grad_ckpt=False)
        ).allocated_bytes
    )


def test_a_model_without_gradient_checkpointing_is_never_planned_or_launched_with_it(
    tmp_path: Path,
) -> None:
    from engine.plan.dryrun.coverage import small_config
    from engine.run.preflight import check_checkpointing

    config, _ = small_config("ctrl")
    folder = tmp_path / "ctrl"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    request = PlanRequest(resolve_model(str(folder)), machine("h100"))
    result = plan(request)
    assert result.best is not None and not result.best.config.grad_ckpt
    assert not any(c.grad_ckpt for c in candidate_configs(request))  # not even tried
    with pytest.raises(FtuiError) as refused:  # launch with --grad-ckpt: refused up front
        check_checkpointing(resolve_model(str(folder)))
    assert "does not support gradient checkpointing" in refused.value.message
    assert "--no-grad-ckpt" in refused.value.fix
    llama = saved_default_config("llama", tmp_path / "llama", num_hidden_layers=2)
    check_checkpointing(resolve_model(str(llama)))


@pytest.mark.slow
def test_an_explicit_target_list_on_fused_experts_is_counted_as_peft_rewrites_it() -> None:
    from engine.plan.dryrun.coverage import small_config
    from engine.plan.dryrun.entry import dry_run

    config, _ = small_config("qwen3_moe")
    arch = ModelArch(name="qwen3_moe", source="dir", config=config)
    param_roles(arch)
    # PEFT moves gate_proj/up_proj/down_proj onto the fused expert tensors (rank 2r on
    # gate_up_proj); the planner used to count them as Linear modules the model lacks
    listed = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    for targets in (listed, ("q_proj", "down_proj")):
        training = TrainingConfig(method="lora", targets=targets, seq_len=128)
        counted = estimate_memory(arch, training).params
        assert dry_run(arch, training).trainable_params == counted.trainable, targets
    attention = TrainingConfig(method="lora", targets=listed[:4])
    assert counted.trainable > estimate_memory(arch, attention).params.trainable


def test_a_target_list_naming_part_of_a_fused_expert_is_refused(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    folder = saved_default_config("qwen3_moe", tmp_path / "qwen3-moe", num_hidden_layers=2)
    args = ["--model", str(folder), "--gpu", "h100", "--targets", "q_proj,gate_proj"]
    out = subprocess.run([sys.executable, "-m", "tui", "plan", *args], env=cli_env,
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "gate_up_proj" in out.stderr and "add up_proj to --targets" in out.stderr
    assert "Traceback" not in out.stderr
