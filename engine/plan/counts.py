"""How many parameters a model has, by what the memory model needs: embeddings, the output
head, what bitsandbytes quantises, what stays 16-bit, what LoRA adds.

From the real model's counts by role when engine.plan.params has them for this config (the
planner asks once per config), else a closed form of a llama-shaped decoder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from engine.models import ModelArch
from engine.plan.fp32_params import kept_fp32
from engine.plan.param_targets import idle_trainable, lora_param_count, parameter_lora
from engine.plan.params import ParamRoles, attached_roles
from engine.training_config import TrainingConfig


@dataclass(frozen=True)
class ParamCounts:
    total: int
    embedding: int  # input embedding (V*h)
    lm_head: int  # 0 when tied
    linear: int  # every decoder-layer linear weight (quantised by QLoRA)
    other: int  # norms, biases, routers kept in 16-bit
    trainable: int
    per_layer_linear: int
    lora: int  # LoRA/DoRA adapter parameters (0 for full)
    # trainable parameters text-only training never updates (multimodal towers): no
    # gradients, no optimizer states
    idle: int = 0
    # parameters the model keeps in fp32 when loaded in 16 bits (engine/plan/fp32_params.py):
    # all of them, the output head's, those never updated, those QLoRA quantises anyway
    fp32: int = 0
    fp32_head: int = 0
    fp32_idle: int = 0
    fp32_quantizable: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Linear:
    name: str
    in_features: int
    out_features: int
    count: int = 1  # per layer (experts)


# -- architecture ----------------------------------------------------------------------------


def decoder_linears(arch: ModelArch) -> list[Linear]:
    """The linear layers of one decoder block, with HF's module names."""
    h, qd, kvd = arch.hidden_size, arch.num_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim
    layers = [
        Linear("q_proj", h, qd),
        Linear("k_proj", h, kvd),
        Linear("v_proj", h, kvd),
        Linear("o_proj", qd, h),
    ]
    if arch.is_moe:
        f = arch.moe_intermediate_size
        e = arch.num_experts
        layers += [
            Linear("gate_proj", h, f, e),
            Linear("up_proj", h, f, e),
            Linear("down_proj", f, h, e),
            Linear("router", h, e),
        ]
    else:
        f = arch.intermediate_size
        if arch.gated_mlp:
            layers.append(Linear("gate_proj", h, f))
        layers += [Linear("up_proj", h, f), Linear("down_proj", f, h)]
    return layers


def _has_qkv_bias(arch: ModelArch) -> bool:
    cfg = arch.text_config
    return bool(cfg.get("attention_bias")) or arch.model_type in ("qwen2", "qwen2_moe")


def _norms_per_layer(arch: ModelArch) -> int:
    return 4 if arch.model_type in ("gemma2", "gemma3", "gemma3_text") else 2


def lora_targets(arch: ModelArch, config: TrainingConfig) -> list[Linear]:
    wanted = set(config.expanded_targets)
    return [lin for lin in decoder_linears(arch) if lin.name in wanted]


def count_params(arch: ModelArch, config: TrainingConfig | None = None) -> ParamCounts:
    """By role from the real model when `engine.plan.params.param_roles` has counted it (the
    planner does, once per config), else the closed form of a llama-shaped decoder."""
    roles = attached_roles(arch)
    if roles is not None:
        return _counts_from_roles(arch, config, roles)
    h, v, n_layers = arch.hidden_size, arch.vocab_size, arch.num_layers
    linears = decoder_linears(arch)
    per_layer_linear = sum(lin.in_features * lin.out_features * lin.count for lin in linears)
    other_per_layer = _norms_per_layer(arch) * h
    if _has_qkv_bias(arch):
        other_per_layer += arch.num_heads * arch.head_dim + 2 * arch.num_kv_heads * arch.head_dim
    if arch.model_type in ("qwen3", "qwen3_moe", "gemma3", "gemma3_text"):
        other_per_layer += 2 * arch.head_dim  # q_norm, k_norm
    embedding = v * h
    lm_head = 0 if arch.tied_embeddings else v * h
    linear = per_layer_linear * n_layers
    other = other_per_layer * n_layers + h
    total = embedding + lm_head + linear + other
    lora = 0
    if config is not None and config.is_peft:
        for lin in lora_targets(arch, config):
            per = config.rank * (lin.in_features + lin.out_features)
            if config.dora:
                per += lin.out_features  # magnitude vector
            lora += per * lin.count * n_layers
    trainable = total if config is None or config.method == "full" else lora
    return ParamCounts(
        total=total + lora,
        embedding=embedding,
        lm_head=lm_head,
        linear=linear,
        other=other,
        trainable=trainable,
        per_layer_linear=per_layer_linear,
        lora=lora,
    )


def _counts_from_roles(
    arch: ModelArch, config: TrainingConfig | None, roles: ParamRoles
) -> ParamCounts:
    embedding, lm_head = roles.role("embedding"), roles.role("lm_head")
    # bitsandbytes quantises Linear modules only: 3-D expert tensors, norms, routers, SSM
    # parameters and towers' non-linear parts stay 16-bit in a QLoRA plan.
    linear = roles.quantizable
    decoder = roles.total - embedding - lm_head - roles.role("towers") - roles.role("mtp")
    lora = lora_param_count(roles, config) if config is not None and config.is_peft else 0
    trainable = roles.total if config is None or config.method == "full" else lora
    dtype = config.dtype if config is not None else "bf16"
    kept = kept_fp32(roles.kept_fp32, dtype, tied=not lm_head)
    return ParamCounts(
        total=roles.total + lora,
        embedding=embedding,
        lm_head=lm_head,
        linear=linear,
        other=roles.total - embedding - lm_head - linear,
        trainable=trainable,
        per_layer_linear=decoder // max(arch.num_layers, 1),
        lora=lora,
        idle=idle_trainable(roles, config),
        fp32=kept.total,
        fp32_head=kept.head,
        fp32_idle=kept.idle,
        fp32_quantizable=kept.quantizable,
    )


def tower_params(arch: ModelArch) -> int:
    """Parameters of a multimodal checkpoint's vision / audio towers and MTP heads (0 when the
    real model was not counted): not decoder layers."""
    roles = attached_roles(arch)
    return roles.role("towers") + roles.role("mtp") if roles is not None else 0


def stack_notes(arch: ModelArch, config: TrainingConfig) -> list[str]:
    """What today's stack does to fused 3-D expert tensors (transformers 5's MoE layers)."""
    roles = attached_roles(arch)
    if roles is not None and config.grad_ckpt and not roles.checkpointing:
        return [
            f"{roles.model_class or arch.model_type} does not support gradient checkpointing: "
            "estimated without it (plan it without --grad-ckpt)"
        ]
    if roles is None or not roles.expert_tensors or not config.is_peft:
        return []
    billions = roles.expert_tensors / 1e9
    adapters = parameter_lora(roles, config)
    if adapters:
        notes = [
            f"all-linear LoRA adapts the fused expert tensors ({billions:.1f}B parameters) and "
            f"routers too, as PEFT maps them: {adapters / 1e6:.1f}M adapter parameters"
        ]
    else:
        notes = [f"LoRA does not adapt the fused expert tensors ({billions:.1f}B parameters)"]
    if config.method == "qlora":
        notes.append(
            f"bitsandbytes quantises Linear layers only: the {billions:.1f}B expert parameters "
            "stay 16-bit"
        )
    return notes
