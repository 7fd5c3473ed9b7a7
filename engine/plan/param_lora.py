"""LoRA on parameters rather than Linear modules: PEFT 0.21 maps transformers 4's expert and
router Linears onto transformers 5's fused 3-D expert tensors and routers when `all-linear`
(or a list naming them) meets an architecture transformers converts (Mixtral and Qwen2-MoE
patterns). What those adapters add (docs/estimator.md, "LoRA on fused experts"): measured
once per config on the meta model, cached with the parameter counts (engine/plan/params.py).

torch and peft are imported inside the functions only.
"""

from __future__ import annotations

import re
from typing import Any

from engine.plan.params import ParamRoles, parameter_lora
from engine.training_config import TrainingConfig


def parameter_lora_per_rank(model: Any) -> tuple[int, int, int, int, int, frozenset[str]]:
    """LoRA parameters per unit of rank on parameters, as ftui's all-linear LoRA (PEFT) makes
    them on this model: PEFT maps transformers 4's expert and router Linears onto transformers
    5's fused 3-D expert tensors and routers (`target_parameters`, rank 2r on a fused
    gate_up_proj), each a ParamWrapper holding A (r*E x in) and B (out x r*E). Applies
    PEFT to `model` (a meta model counted already). Also the wrapped parameters' elements,
    how many layers hold them and their input widths (experts', routers'): ParamRoles'
    parameter_lora* fields in that order; zeros without peft or when PEFT refuses. Last, the
    Linear names PEFT then no longer adapts: the list it rewrites drops every module named
    like a transformers-4 expert projection (a shared expert's or a dense layer's
    gate_proj / up_proj / down_proj)."""
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
        return 0, 0, 0, 0, 0, frozenset()
    total = weights = expert_inputs = router_inputs = 0
    layers: set[str] = set()
    adapted: set[str] = set()
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and type(module).__name__ != "ParamWrapper":
            adapted.add(name.rsplit(".", 1)[-1])
        elif type(module).__name__ == "ParamWrapper":
            for factor in (module.lora_A, module.lora_B):
                total += sum(p.numel() for p in factor.parameters())
            weights += module.get_param().numel()
            layers.add(_LAYER_INDEX.sub(r"\1", name) if _LAYER_INDEX.search(name) else name)
            if module.num_experts > 1:
                expert_inputs += module.in_features
            else:
                router_inputs += module.in_features
    dropped = frozenset(linears - adapted) if total else frozenset()
    return total, weights, len(layers), expert_inputs, router_inputs, dropped


_LAYER_INDEX = re.compile(r"^(.*?\.\d+)\..*$")


def parameter_lora_transient_bytes(roles: ParamRoles, config: TrainingConfig, b: int) -> float:
    """What LoRA on one layer's fused experts holds while backward runs it: PEFT's
    ParamWrapper feeds the experts W + BA, a tensor the size of each wrapped parameter, which
    autograd keeps for the input's gradient, and the gradient of the largest (gate_up_proj,
    about two thirds of a layer's experts) on its way to A and B."""
    if not (config.is_peft and roles.parameter_lora_layers and parameter_lora(roles, config)):
        return 0.0
    per_layer = roles.parameter_lora_weights / roles.parameter_lora_layers
    return b * per_layer * 5 / 3


def parameter_lora_saved_bytes(roles: ParamRoles, config: TrainingConfig, b: int) -> float:
    """Without checkpointing every layer keeps its W + BA until backward reaches it."""
    if not (config.is_peft and roles.parameter_lora_layers and parameter_lora(roles, config)):
        return 0.0
    return float(b * roles.parameter_lora_weights)
