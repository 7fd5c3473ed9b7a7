"""The largest moment of a decoder layer's life under checkpointing, per token.

engine.plan.activations says what each kind of layer saves for backward; a recomputed layer
holds more than that at one of its moments: backward's gradients beside the saved tensors
(with what backward has already freed when it reaches a scan), a Mamba-2 scan's transients as
it returns, or PEFT's fp32 tensors while the widest MLP Linear runs. `stack_activations`
takes the largest over layer kinds. Pure Python, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.models import ModelArch
from engine.plan.activations import (
    _AFTER_SCAN,
    DENSE,
    HYBRID,
    MAMBA2,
    MOE,
    LayerKind,
    _cfg,
    _mlp,
    _shared_expert_size,
    backward_bytes,
    forward_bytes,
    layer_bytes,
    layer_kinds,
    mask_bytes,
)
from engine.plan.param_targets import adapted_groups
from engine.plan.params import attached_roles
from engine.plan.ssm import mamba2_bytes as _mamba2
from engine.plan.ssm import mamba2_output_side as _mamba2_output_side
from engine.plan.ssm import mamba2_scan_backward as _mamba2_scan_backward
from engine.plan.ssm import mamba2_scan_transient as _mamba2_scan_transient
from engine.plan.zamba1 import ZAMBA1_KINDS
from engine.plan.zamba1 import freed_before_scan as _zamba1_freed
from engine.training_config import TrainingConfig


@dataclass(frozen=True)
class StackActivations:
    """Bytes per token saved for backward: all layers together (no checkpointing) and the
    largest single layer (what checkpointing's recompute holds at once) with the gradients
    its backward creates beside them."""

    total: float
    largest: float
    kinds: tuple[tuple[LayerKind, int], ...]  # each kind and how many layers have it


def block_before_scan(arch: ModelArch) -> bool:
    """Zamba's hybrid layers run the shared transformer block (attention and MLP) before their
    Mamba block, whose layers have no MLP of their own: `layers_block_type` names "hybrid"
    layers (Falcon-H1's, Inkling's and ZAYA's "hybrid" `layer_types` are other layouts)."""
    types = _cfg(arch).get("layers_block_type")
    return isinstance(types, list) and "hybrid" in types


def _after_scan(arch: ModelArch, config: TrainingConfig, b: int, kind: LayerKind) -> float:
    """What a Mamba-2 layer saves after its scan: the second norm and the MLP (unless the
    layer's block runs before the scan), the scan's output side (gated norm, out_proj's input)
    and LoRA's fp32 inputs of those modules."""
    h = arch.hidden_size
    before = block_before_scan(arch)
    after: float = 0.0 if before else 4 * h if arch.rms_norm else b * h
    if kind.mixer in ZAMBA1_KINDS:  # the shared block and its MLP run before the scan
        after = _zamba1_freed(arch, config, b)
    elif kind.mlp == DENSE and not before:
        after += _mlp(arch, config, b, arch.intermediate_size)
    elif kind.mlp == MOE and not before:
        after += max(arch.experts_per_token, 1) * _mlp(arch, config, b, arch.moe_intermediate_size)
    if kind.mixer in (MAMBA2, HYBRID):
        after += _mamba2_output_side(arch, b)
    roles = attached_roles(arch) if config.is_peft else None
    if roles is not None:  # LoRA's fp32 inputs of the modules after the scan
        layers = max(arch.num_layers, 1)
        names = {"out_proj"} if before else _AFTER_SCAN
        for group in adapted_groups(roles, config):
            if group.name in names and not group.tower:
                after += 4 * group.in_features / layers
    return after


def _freed_before_scan(arch: ModelArch, config: TrainingConfig, b: int, kind: LayerKind) -> float:
    """What a layer's backward has freed when it reaches its scan's largest moment: backward
    runs the layer in reverse, so what the layer saved after the scan is gone by then, and so
    are the scan's own tensors its later steps saved (engine.plan.ssm)."""
    if not backward_bytes(arch, config, kind, b):
        return 0.0
    freed = _after_scan(arch, config, b, kind)
    if kind.mixer in (MAMBA2, HYBRID):
        saved = _mamba2(arch, config, b) - _mamba2_output_side(arch, b)
        freed += saved - _mamba2_scan_backward(arch, config, b)[0]
    return freed


def _scan_end(arch: ModelArch, config: TrainingConfig, b: int, kind: LayerKind) -> float:
    """Beyond the layer's saved tensors, what its forward holds when the Mamba-2 scan returns:
    the scan's transients, before the layer saves what comes after the scan."""
    if kind.mixer not in (MAMBA2, HYBRID):
        return 0.0
    return _mamba2_scan_transient(arch, config) - _after_scan(arch, config, b, kind)


def _lora_moment(
    arch: ModelArch, config: TrainingConfig, b: int, kind: LayerKind, transient: float
) -> float:
    """What a layer holds beyond its saved tensors while PEFT's LoRA forward of the widest
    adapted MLP Linear runs (`transient`: its two fp32 output-wide tensors, 8 bytes x width w):
    the base Linear's output beside them, and the forward's locals: the MLP's input (the norm's
    output) and the residual stream. The MLP's own saved tensors are not made yet (that Linear
    is its first: gate_up, or up_proj after gate_proj's output and activation), nor the fp32
    input LoRA keeps for down_proj. The MLP is the layer's dense one or, in an MoE layer, its
    shared expert."""
    f = {DENSE: arch.intermediate_size, MOE: _shared_expert_size(arch)}.get(kind.mlp, 0)
    widest = f * (2 if arch.gated_mlp else 1)
    w = transient / 8
    if transient <= 0 or w > widest:
        # no MLP of this layer was counted that wide (none, or a width the config does not
        # give): the fp32 tensors on top of everything the layer saves
        return max(transient, 0.0)
    before = 2 * b * (widest - w)  # a separate gate_proj's output and its activation
    locals_ = 2 * b * arch.hidden_size
    return 8 * w + b * w + before + locals_ - _mlp(arch, config, b, f) - 4 * f


def stack_activations(
    arch: ModelArch, config: TrainingConfig, b: int, forward_extra: float = 0.0
) -> StackActivations:
    """Every layer's saved bytes per token: their sum and the largest layer (with its
    backward's own gradients, or what its forward holds for a moment: the mixer's transients
    or `forward_extra`, held at another moment of a recomputed forward while the layer's saved
    tensors are alive)."""
    counts: dict[LayerKind, int] = {}
    for kind in layer_kinds(arch):
        counts[kind] = counts.get(kind, 0) + 1
    sizes = {kind: layer_bytes(arch, config, b, kind) for kind in counts}
    total = sum(sizes[kind] * n for kind, n in counts.items())
    largest = max(
        sizes[kind]
        + max(
            backward_bytes(arch, config, kind, b) - _freed_before_scan(arch, config, b, kind),
            _scan_end(arch, config, b, kind),
            forward_bytes(arch, config, b, kind),
            _lora_moment(arch, config, b, kind, forward_extra),  # after the mixer's transients
            0.0,
        )
        for kind in counts
    )
    masks = mask_bytes(arch, config, b)
    return StackActivations(total + masks, largest + masks, tuple(counts.items()))
