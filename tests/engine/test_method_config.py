"""The PEFT family's knobs: each belongs to its methods, and bad combinations name the fix."""

from __future__ import annotations

import pytest

from engine.errors import FtuiError
from engine.plan.methods import check_architecture
from engine.training_config import ConfigError, TrainingConfig


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"method": "prefix", "rslora": True}, "--rslora is a LoRA option"),
        ({"method": "ia3", "lora_plus_ratio": 16.0}, "--lora-plus-ratio is a LoRA option"),
        ({"method": "qlora", "base_bits": 8}, "QLoRA's base is 4-bit"),
        ({"method": "lora", "base_bits": 4}, "is not 16 or 8"),
        ({"method": "qlora", "lora_init": "pissa"}, "a quantised base has none"),
        ({"method": "prompt", "virtual_tokens": 0}, "--virtual-tokens must be at least 1"),
        ({"method": "freeze", "trainable_layers": 0}, "--trainable-layers must be at least 1"),
        ({"method": "ia3", "stage": "dpo"}, "trains with --stage sft or pretrain"),
        ({"method": "lora", "lora_init": "eva"}, "is not a LoRA initialisation"),
        ({"method": "prefix", "grad_ckpt": True}, "cannot train with gradient checkpointing"),
    ],
)
def test_family_knobs_refused_with_their_fix(changes: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError) as error:
        TrainingConfig(**changes).validate()  # type: ignore[arg-type]
    assert words in error.value.message and error.value.fix


@pytest.mark.parametrize(
    "changes",
    [
        {"method": "lora", "rslora": True, "lora_init": "pissa", "lora_plus_ratio": 16.0},
        {"method": "lora", "base_bits": 8},
        {"method": "prefix", "virtual_tokens": 32, "grad_ckpt": False},
        {"method": "freeze", "trainable_layers": 4, "train_embeddings": True},
    ],
)
def test_family_configs_accepted(changes: dict[str, object]) -> None:
    TrainingConfig(**changes).validate()  # type: ignore[arg-type]


def test_bias_ia3_and_llama_adapter_need_their_architectures() -> None:
    check_architecture("bias", {"model_type": "qwen2"})
    check_architecture("bias", {"model_type": "llama", "attention_bias": True})
    check_architecture("llama-adapter", {"model_type": "mistral"})
    with pytest.raises(FtuiError, match="has none"):
        check_architecture("bias", {"model_type": "llama"})
    with pytest.raises(FtuiError, match="not qwen3"):
        check_architecture("llama-adapter", {"model_type": "qwen3"})
    check_architecture("ia3", {"model_type": "gemma2"})
    with pytest.raises(FtuiError, match="no default IA3 modules for phi3"):
        check_architecture("ia3", {"model_type": "phi3"})  # PEFT would fail at the first step


def test_dora_is_refused_where_all_linear_adapts_fused_experts() -> None:
    """PEFT's all-linear wraps transformers 5's fused 3-D experts in ParamWrapper, which has
    no DoRA: refused before anything starts, with the attention-only fix; dense models and
    an explicit attention list plan as before."""
    from engine.models import resolve_model
    from engine.plan.methods import check_dora_on_experts

    mixtral = resolve_model("mixtral-8x7b")
    with pytest.raises(FtuiError, match="DoRA cannot adapt parameters") as refused:
        check_dora_on_experts(mixtral, True, ("all-linear",))
    assert "--targets q_proj,k_proj,v_proj,o_proj" in (refused.value.fix or "")
    check_dora_on_experts(mixtral, True, ("q_proj", "k_proj", "v_proj", "o_proj"))
    check_dora_on_experts(mixtral, False, ("all-linear",))
    check_dora_on_experts(resolve_model("qwen2.5-7b"), True, ("all-linear",))
