"""LoRA on parameters rather than Linear modules: PEFT 0.21 maps transformers 4's expert and
router Linears onto transformers 5's fused 3-D expert tensors and routers when `all-linear`
(or a list naming them) meets an architecture transformers converts (Mixtral and Qwen2-MoE
patterns). What those adapters add (docs/estimator.md, "LoRA on fused experts"): measured
once per config on the meta model, cached with the parameter counts (engine/plan/params.py).

torch and peft are imported inside the functions only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from engine.plan.param_targets import fused_target_parts, parameter_lora_share
from engine.plan.params import ParamRoles
from engine.training_config import TrainingConfig


@dataclass(frozen=True)
class ParameterLoraProbe:
    """What PEFT's all-linear LoRA puts on parameters of one model, per unit of rank."""

    # per rank, wrapped weights, layers holding them, experts' and routers' input widths
    totals: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)
    parts: dict[str, list[int]] = field(default_factory=dict)  # the same per parameter
    targets: dict[str, str] = field(default_factory=dict)  # transformers-4 name -> parameter
    fused: dict[str, list[str]] = field(default_factory=dict)  # parameter -> its v4 parts
    dropped: frozenset[str] = frozenset()  # Linear names all-linear no longer adapts


def parameter_lora_per_rank(model: Any) -> ParameterLoraProbe:
    """LoRA parameters per unit of rank on parameters, as ftui's all-linear LoRA (PEFT) makes
    them on this model: PEFT maps transformers 4's expert and router Linears onto transformers
    5's fused 3-D expert tensors and routers (`target_parameters`, rank 2r on a fused
    gate_up_proj), each a ParamWrapper holding A (r*E x in) and B (out x r*E). Applies
    PEFT to `model` (a meta model counted already). Also the wrapped parameters' elements,
    how many layers hold them and their input widths (experts', routers'), in total and per
    wrapped parameter, and PEFT's mapping of target names for this model type (an explicit
    list is rewritten with it). Last, the Linear names PEFT then no longer adapts: the list
    it rewrites drops every module named like a transformers-4 expert projection (a shared
    expert's or a dense layer's gate_proj / up_proj / down_proj). Empty without peft or
    when PEFT refuses."""
    import torch

    from engine.plan.params import adaptable_linear
    from engine.plan.peft_setup import lora_config
    from engine.training_config import TrainingConfig

    output = model.get_output_embeddings()
    linears = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if name and module is not output and adaptable_linear(module)
    }
    try:
        from peft import get_peft_model

        config = lora_config(TrainingConfig(method="lora", rank=1, alpha=1), model)
        with torch.device("meta"):
            peft_model = get_peft_model(model, config)
    except Exception:  # peft missing or refusing: the dry run says so
        return ParameterLoraProbe()
    adapted: set[str] = set()
    parts: dict[str, list[int]] = {}
    layers: dict[str, set[str]] = {}
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and type(module).__name__ != "ParamWrapper":
            adapted.add(name.rsplit(".", 1)[-1])
        elif type(module).__name__ == "ParamWrapper":
            part = parts.setdefault(_parameter_key(name, module.parameter_name), [0, 0, 0, 0, 0])
            for factor in (module.lora_A, module.lora_B):
                part[0] += sum(p.numel() for p in factor.parameters())
            part[1] += module.get_param().numel()
            where = _LAYER_INDEX.sub(r"\1", name) if _LAYER_INDEX.search(name) else name
            layers.setdefault(_parameter_key(name, module.parameter_name), set()).add(where)
            part[3 if module.num_experts > 1 else 4] += module.in_features
    if not parts:
        return ParameterLoraProbe()
    for key, part in parts.items():
        part[2] = len(layers[key])
    every_layer = {where for held in layers.values() for where in held}
    totals = (
        sum(p[0] for p in parts.values()),
        sum(p[1] for p in parts.values()),
        len(every_layer),
        sum(p[3] for p in parts.values()),
        sum(p[4] for p in parts.values()),
    )
    targets, fused = _peft_target_mapping(model)
    dropped = frozenset(linears - adapted)
    return ParameterLoraProbe(totals, parts, targets, fused, dropped)


def _parameter_key(module_name: str, parameter_name: str) -> str:
    """A wrapped parameter as PEFT's mapping names it: "gate_up_proj", "gate.weight"."""
    names = [n for n in module_name.split(".") if n != "base_layer"]
    return f"{names[-1]}.{parameter_name}" if parameter_name == "weight" else parameter_name


def _peft_target_mapping(model: Any) -> tuple[dict[str, str], dict[str, list[str]]]:
    """PEFT's rewrite of target names for this model type (transformers-4 expert and router
    names -> fused parameters) and which names are fused together; empty where PEFT does not
    rewrite (its private tables: read defensively, so a PEFT without them rewrites nothing)."""
    try:
        from peft.utils import transformers_weight_conversion as conversion
    except ImportError:
        return {}, {}
    patterns = getattr(conversion, "_MODEL_TO_CONVERSION_PATTERN", {})
    base = patterns.get(getattr(model.config, "model_type", None))
    mapping = getattr(conversion, "_MOE_TARGET_MODULE_MAPPING", {}).get(base, {})
    fused = getattr(conversion, "_MOE_FUSED_TARGETS", {}).get(base, {})
    return dict(mapping), {k: list(v) for k, v in fused.items()}


_LAYER_INDEX = re.compile(r"^(.*?\.\d+)\..*$")


def parameter_lora_transient_bytes(roles: ParamRoles, config: TrainingConfig, b: int) -> float:
    """What LoRA on one layer's fused experts holds while backward runs it: PEFT's
    ParamWrapper feeds the experts W + BA, a tensor the size of each wrapped parameter, which
    autograd keeps for the input's gradient, and the gradient of the largest (gate_up_proj,
    about two thirds of a layer's experts) on its way to A and B."""
    per_rank, weights, layers, _, _ = parameter_lora_share(roles, config)
    if not (per_rank and layers):
        return 0.0
    parts = fused_target_parts(roles, config)
    largest = max(roles.parameter_lora_parts[name][1] for name in parts)
    return b * (weights + largest) / layers


def parameter_lora_saved_bytes(roles: ParamRoles, config: TrainingConfig, b: int) -> float:
    """Without checkpointing every layer keeps its W + BA until backward reaches it."""
    per_rank, weights, _, _, _ = parameter_lora_share(roles, config)
    return float(b * weights) if per_rank else 0.0
