"""Architectures whose dry run used to decline: those that now run agree with the analytic
estimate; the others are refused or declined in one line that says why."""

from __future__ import annotations

import pytest

from engine.errors import FtuiError
from engine.models import ModelArch, check_causal_lm
from engine.plan.dryrun.coverage import small_config
from engine.plan.params import param_roles
from engine.training_config import TrainingConfig

pytest.importorskip("peft")
pytest.importorskip("transformers")


def small_arch(model_type: str) -> ModelArch:
    config, _ = small_config(model_type)
    arch = ModelArch(name=model_type, source="dir", config=config)
    param_roles(arch)
    return arch


def test_the_shrunk_top_k_fits_the_shrunk_experts() -> None:
    # Kimi-Linear and Bailing-Hybrid spell top-k num_experts_per_token: left at 8 over 4
    # experts, the router's topk failed ("k not in range for dimension")
    for model_type in ("kimi_linear", "bailing_hybrid"):
        arch = small_arch(model_type)
        assert 0 < arch.experts_per_token <= arch.num_experts


def test_kimi_delta_attention_is_its_own_layer_kind() -> None:
    from engine.plan.activations import layer_kinds
    from engine.plan.kda import KDA

    kinds = {kind.mixer for kind in layer_kinds(small_arch("kimi_linear"))}
    assert KDA in kinds


def test_zamba_shrinks_to_a_buildable_small_model() -> None:
    # one hybrid layer cannot be built (its shared block ties to the others): the shrink used
    # to fall back to the full-size model, whose token-by-token scan never finished
    config, shrunk = small_config("zamba")
    assert shrunk == "layers, experts, dimensions"
    assert config["layers_block_type"].count("hybrid") == 2
    assert config["n_mamba_heads"] == 2


@pytest.mark.parametrize(
    ("model_type", "why"),
    [
        ("git", "image-to-text"),
        ("gemma4_assistant", "draft model"),
        ("gemma4_unified_assistant", "draft model"),
        ("xmod", "encoder"),
    ],
)
def test_models_a_text_fine_tune_cannot_train_are_refused(model_type: str, why: str) -> None:
    config = {"model_type": model_type, "architectures": [f"{model_type}ForCausalLM"]}
    if model_type == "xmod":
        config.pop("architectures")
    with pytest.raises(FtuiError, match=why):
        check_causal_lm(config, model_type)


@pytest.mark.slow
def test_value_routed_experts_decline_in_one_line() -> None:
    from engine.plan.dryrun.entry import DryRunDeclined, dry_run_or_decline

    dry = dry_run_or_decline(small_arch("longcat_flash"), TrainingConfig(seq_len=128))
    assert isinstance(dry, DryRunDeclined)
    assert "sizes tensors from their values" in dry.reason
    assert "\n" not in dry.reason
