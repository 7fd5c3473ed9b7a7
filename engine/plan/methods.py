"""The PEFT family beyond LoRA, as the planner sees it: which architectures a method needs
(bias terms for BitFit; PEFT's adaption prompt supports a few model types) and what each
method merges into.

Light to import: no torch, no peft.
"""

from __future__ import annotations

from typing import Any

# PEFT's AdaptionPromptConfig knows these model types (peft/tuners/adaption_prompt/config.py).
LLAMA_ADAPTER_TYPES = ("llama", "mistral", "gpt2")
# Model types whose linears or norms carry bias terms (BitFit trains them).
BIASED_TYPES = (
    "gpt2", "gpt_neox", "gpt_bigcode", "gptj", "opt", "bloom", "phi", "qwen2", "qwen2_moe",
    "starcoder2", "bert", "roberta",
)  # fmt: skip
MODELS_WITH_BIASES = (
    "GPT-2, Qwen2 / Qwen2.5 (q/k/v biases), Phi-2, Pythia (GPT-NeoX), OPT, BLOOM, StarCoder2"
)
# Why a method's result cannot be folded into the base weights (ftui export --merge).
MERGE_REFUSALS = {
    "prefix": "prefix tuning adds trained keys and values in front of every layer's "
    "attention, not a change of any weight",
    "prompt": "prompt tuning adds trained input embeddings in front of the prompt, not a "
    "change of any weight",
    "ptuning": "P-tuning adds virtual tokens from its prompt encoder in front of the prompt, "
    "not a change of any weight",
    "llama-adapter": "llama-adapter adds a gated adaption prompt to the top layers' attention, "
    "not a change of any weight",
}

# PEFT's adapter_config.json `peft_type` -> ftui's method.
PEFT_TYPE_METHODS = {
    "LORA": "lora",
    "PREFIX_TUNING": "prefix",
    "PROMPT_TUNING": "prompt",
    "P_TUNING": "ptuning",
    "IA3": "ia3",
    "ADAPTION_PROMPT": "llama-adapter",
}


def has_biases(model_type: str, config: dict[str, Any]) -> bool:
    """Whether the model has bias terms for BitFit, from its config.json."""
    flags = ("attention_bias", "mlp_bias", "use_bias", "bias", "add_bias_linear", "qkv_bias")
    if any(config.get(flag) is True for flag in flags):
        return True
    return model_type in BIASED_TYPES


def bias_refusal(model_type: str) -> tuple[str, str]:
    """(message, fix) of --method bias on a model without bias terms."""
    return (
        f"--method bias (BitFit) trains bias terms only: this {model_type} model has none",
        f"use a model with biases ({MODELS_WITH_BIASES}), or --method lora / ia3",
    )


def check_architecture(method: str, config: dict[str, Any]) -> None:
    """Refuse a method the model cannot take (FtuiError naming the models that can)."""
    from engine.errors import FtuiError

    text = config.get("text_config")
    cfg = text if isinstance(text, dict) and "hidden_size" in text else config
    model_type = str(cfg.get("model_type") or config.get("model_type") or "unknown")
    if method == "bias" and not has_biases(model_type, cfg):
        raise FtuiError(*bias_refusal(model_type))
    if method == "ia3":
        from engine.plan.method_memory import IA3_MODULES

        if model_type not in IA3_MODULES:
            raise FtuiError(
                f"--method ia3: PEFT has no default IA3 modules for {model_type} models",
                "use --method lora (or ia3 on Llama, Mistral, Qwen2/3, Gemma, Phi-2, GPT-2)",
            )
    if method == "llama-adapter" and model_type not in LLAMA_ADAPTER_TYPES:
        raise FtuiError(
            f"--method llama-adapter: PEFT's adaption prompt supports "
            f"{', '.join(LLAMA_ADAPTER_TYPES)} models, not {model_type}",
            "use --method prefix (keys and values in every layer) or lora",
        )


def check_dora_on_experts(arch: Any, dora: bool, targets: tuple[str, ...]) -> None:
    """Refuse DoRA where PEFT's all-linear adapts fused 3-D expert tensors (transformers 5's
    MoE layers, through PEFT's ParamWrapper, which has no DoRA): the run would fail at PEFT's
    set-up. Only asks the parameter counts (cached; the meta model at worst) when DoRA and
    all-linear are both asked for."""
    from engine.errors import FtuiError
    from engine.training_config import ALL_LINEAR

    if not dora or ALL_LINEAR not in targets or not getattr(arch, "is_moe", False):
        return
    from engine.plan.params import param_roles

    roles = param_roles(arch)
    if roles is not None and roles.parameter_lora:
        raise FtuiError(
            f"--dora with all-linear on {arch.name}: PEFT puts LoRA on its fused expert tensors "
            "and router, and DoRA cannot adapt parameters (only Linear modules)",
            "drop --dora, or adapt attention only: --targets q_proj,k_proj,v_proj,o_proj",
        )


def check_fused_targets(arch: Any, targets: tuple[str, ...]) -> None:
    """An explicit --targets list naming some but not all of the transformers-4 expert
    projections PEFT fuses into one parameter on this MoE (gate_proj and up_proj into
    gate_up_proj): PEFT refuses it at set-up, so it is refused before anything starts."""
    from engine.errors import FtuiError

    if not getattr(arch, "is_moe", False):
        return
    from engine.plan.param_targets import partly_fused_targets
    from engine.plan.params import param_roles

    roles = param_roles(arch)
    fused, missing = partly_fused_targets(roles, targets) if roles is not None else ("", [])
    if fused and roles is not None:
        parts = " and ".join(roles.parameter_lora_fused[fused])
        raise FtuiError(
            f"--targets on {arch.name}: PEFT fuses {parts} "
            f"into the experts' {fused}, and cannot adapt only part of it",
            f"add {','.join(missing)} to --targets, or leave the experts out",
        )
