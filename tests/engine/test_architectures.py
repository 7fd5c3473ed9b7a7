"""This year's architectures as transformers itself defines them: the planner's parameter
counts are the real model's, cached per config; a config transformers cannot build falls back
to the closed form and says so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.machine.fakenvml import parse_simulate_spec
from engine.models import resolve_model
from engine.plan.planner import Machine, PlanRequest, plan

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
