"""LoRA on the real model's modules and parameters, from the counts `params.param_roles`
recorded: which Linear groups a target list adapts (PEFT's all-linear, or names less those
PEFT rewrites onto fused experts), which fused expert tensors and routers get LoRA, how many
parameters that trains and what the adapters keep for backward.

No torch: the counts are data.
"""

from __future__ import annotations

from engine.models import ModelArch
from engine.plan.params import LinearGroup, ParamRoles
from engine.training_config import ALL_LINEAR, TrainingConfig


def adapted_groups(roles: ParamRoles, config: TrainingConfig) -> list[LinearGroup]:
    """The Linear modules LoRA adapts: PEFT's all-linear is every Linear but the output head
    (fused 3-D experts are parameters, not Linears: all-linear leaves them alone); an explicit
    list matches module names, less those PEFT rewrites onto fused experts on this model
    (a shared expert's or a dense layer's gate_proj then gets no LoRA: PEFT drops the name)."""
    if ALL_LINEAR in config.targets:
        skip = set(roles.unadaptable)
        return [group for group in roles.linears if group.name not in skip]
    wanted = set(config.targets) - set(roles.parameter_lora_targets)
    return [group for group in roles.linears if group.name in wanted]


def fused_target_parts(roles: ParamRoles, config: TrainingConfig) -> list[str]:
    """The parameters (fused experts, routers) PEFT puts LoRA on for `config`'s targets:
    every one for all-linear, those an explicit list's transformers-4 names map to."""
    if not config.is_peft or not roles.parameter_lora_parts:
        return []
    if ALL_LINEAR in config.targets:
        return sorted(roles.parameter_lora_parts)
    wanted = {
        roles.parameter_lora_targets[t] for t in config.targets if t in roles.parameter_lora_targets
    }
    return sorted(name for name in roles.parameter_lora_parts if _part_of(name, wanted))


def _part_of(name: str, wanted: set[str]) -> bool:
    return any(name == w or name.endswith(f".{w}") or w.endswith(f".{name}") for w in wanted)


def partly_fused_targets(roles: ParamRoles, targets: tuple[str, ...]) -> tuple[str, list[str]]:
    """A fused parameter an explicit list names only some parts of ("", [] when none): PEFT
    refuses such a list at set-up ("Cannot convert PEFT target(s) ...")."""
    if ALL_LINEAR in targets:
        return "", []
    for fused, parts in sorted(roles.parameter_lora_fused.items()):
        named = [part for part in parts if part in targets]
        if named and len(named) < len(parts):
            return fused, [part for part in parts if part not in targets]
    return "", []


def lora_param_count(roles: ParamRoles, config: TrainingConfig | None) -> int:
    if config is None or not config.is_peft:
        return 0
    total = 0
    for group in adapted_groups(roles, config):
        total += config.rank * (group.in_features + group.out_features)
        if config.dora:
            total += group.out_features  # magnitude vector
    return total + parameter_lora(roles, config)


def parameter_lora_share(roles: ParamRoles, config: TrainingConfig) -> list[int]:
    """What `config`'s LoRA puts on parameters (fused experts, routers), summed over the
    wrapped parameters: [per rank, weights, layers, expert inputs, router inputs]."""
    parts = [roles.parameter_lora_parts[name] for name in fused_target_parts(roles, config)]
    if not parts:
        return [0, 0, 0, 0, 0]
    sums = [sum(part[i] for part in parts) for i in range(5)]
    sums[2] = max(part[2] for part in parts)  # layers holding them, not a sum
    return sums


def parameter_lora(roles: ParamRoles, config: TrainingConfig) -> int:
    """LoRA on fused expert tensors and routers, as PEFT maps all-linear or an explicit list
    naming transformers 4's expert and router Linears (engine/plan/param_lora.py)."""
    return config.rank * parameter_lora_share(roles, config)[0]


def idle_trainable(roles: ParamRoles, config: TrainingConfig | None) -> int:
    """Trainable parameters text-only training never updates: the vision/audio towers of a
    multimodal checkpoint (full fine-tune) or LoRA's adapters on them, and DeepSeek sparse
    attention's indexer (run under no_grad) or the adapters on its Linears. They get no
    gradient, so AdamW keeps no state for them."""
    if config is None:
        return 0
    if config.method == "full":
        return roles.role("towers") + roles.no_gradient
    if not config.is_peft:
        return 0
    total = 0
    for group in adapted_groups(roles, config):
        if group.tower:
            total += config.rank * (group.in_features + group.out_features)
            total += group.out_features if config.dora else 0
    return total


def lora_saved_input_bytes(
    roles: ParamRoles, arch: ModelArch, config: TrainingConfig, every_module: bool = False
) -> float:
    """Bytes per token per decoder layer that LoRA adds to what backward keeps: PEFT runs
    adapters in fp32, so each adapted module keeps an fp32 copy of its input (and the rank-r
    intermediate; DoRA its output). Expert linears see k of E experts' share of tokens.
    `every_module`: a layer that runs one module of each adapted name (Zamba's hybrid layer:
    the shared transformer block, then its own Mamba block), not the average layer."""
    layers = max(arch.num_layers, 1)
    routed = arch.experts_per_token / arch.num_experts if arch.num_experts else 1.0
    total = 0.0
    for group in adapted_groups(roles, config):
        if group.tower:
            continue  # text-only training never runs the towers
        share = routed if group.expert else 1.0
        per = 4 * group.in_features + 4 * config.rank * group.modules
        if config.dora:
            per += 4 * group.out_features
        total += share * per / (max(group.modules, 1) if every_module else layers)
    _, _, _, expert_inputs, router_inputs = parameter_lora_share(roles, config)
    if expert_inputs or router_inputs:
        # W + BA needs a gradient, so the experts' and routers' matmuls keep their inputs
        # (in the compute dtype; each token visits k experts)
        b = 4 if config.dtype == "fp32" else 2
        k = arch.experts_per_token if arch.num_experts else 1
        total += b * (k * expert_inputs + router_inputs) / layers
    return total
