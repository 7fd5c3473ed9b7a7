"""Memory and speed of the preference stages, on top of the SFT estimate.

- Paired stages (DPO, ORPO, SimPO) put chosen and rejected through the model in one batch: the
  policy's micro-batch is twice the pairs.
- DPO and KTO compare with a reference model. TRL runs the reference forward (no grad) after the
  policy's forward, while the policy's saved activations are alive: that phase holds them plus
  one layer's working activations of the reference pass. With adapters the reference is the
  same weights with the adapters disabled; a full fine-tune holds a frozen copy of the weights
  (compute dtype), unless the reference log-probs are precomputed before training.
- KTO also runs the KL completions through the policy (no grad) and the reference: three extra
  forwards per trained token.
- ORPO and SimPO have no reference.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from engine.models import ModelArch
from engine.training_config import PREFERENCE_STAGES, TrainingConfig

GIB = 1024**3
# TRL's DPO and KTO trainers compute the log-probs from the hidden states in chunks (a fused LM
# head): the full logits of the batch never exist. ORPO's and CPO's trainers still make them.
FUSED_LOG_PROBS = ("dpo", "kto")


def extra_forward_passes(config: TrainingConfig) -> float:
    """Forwards per trained token beyond the policy's own forward and backward."""
    kind = config.reference_kind
    if config.stage == "kto":
        return 3.0 if kind != "none" else 1.0
    return 1.0 if kind != "none" else 0.0


def preference_memory(
    arch: ModelArch,
    config: TrainingConfig,
    calibration: Any,
    *,
    correction: float,
    loss_path: str,
) -> Any:
    """The estimator's MemoryEstimate for a preference stage (see the module docstring)."""
    from engine.plan.estimator import (
        DTYPE_BYTES,
        estimate_memory,
        layer_activation_bytes,
        logits_bytes_per_token,
    )

    assert config.stage in PREFERENCE_STAGES
    policy = config.with_changes(stage="sft", batch=config.batch * config.sequences_per_sample)
    est = estimate_memory(arch, policy, calibration, loss_path=loss_path)
    b = DTYPE_BYTES[config.dtype]
    tokens = policy.tokens_per_micro_batch
    kind = config.reference_kind
    shards = config.num_gpus if config.sharding in ("zero3", "fsdp") else 1
    copy = est.params.total * b / shards if kind == "copy" else 0.0
    phases = {k: float(v) + copy for k, v in est.phase_bytes.items() if v}
    logits = logits_bytes_per_token(arch, b, calibration, loss_path) * tokens
    if config.stage in FUSED_LOG_PROBS:
        phases["forward_backward"] -= logits  # log-probs in chunks: no full logits
    reference_pass = 0.0
    if kind in ("adapter", "copy"):
        per_layer = layer_activation_bytes(arch, policy, b) * calibration.activation_scale
        reference_pass = per_layer * tokens + 2 * arch.hidden_size * tokens * b
        phases["reference_forward"] = (
            est.phase_bytes["forward_backward"] - logits + reference_pass + copy
        )
    peak_phase = max(phases, key=lambda k: phases[k])
    allocated = phases[peak_phase] * correction
    grow = allocated - est.allocated_bytes
    reserved = est.reserved_bytes + grow * (1 + calibration.reserved_frag)
    device = reserved + (est.device_bytes - est.reserved_bytes)
    breakdown = _breakdown(est, peak_phase, phases[peak_phase], copy, reference_pass)
    breakdown["overhead"] = int(device - allocated)
    notes = list(est.notes)
    pairs = " (chosen + rejected)" if config.sequences_per_sample == 2 else ""
    notes.append(f"{config.stage}: {policy.batch} sequences per micro-batch{pairs}")
    notes.append(_reference_note(config.stage, kind, copy, reference_pass))
    return replace(
        est,
        allocated_bytes=int(allocated),
        reserved_bytes=int(reserved),
        device_bytes=int(device),
        breakdown=breakdown,
        peak_phase=peak_phase,
        phase_bytes={k: int(v) for k, v in phases.items()},
        notes=tuple(notes),
    )


def _breakdown(
    est: Any, peak_phase: str, peak: float, copy: float, reference_pass: float
) -> dict[str, int]:
    """The SFT estimate's parts at the new peak: what the phase holds beyond the states is
    activations (the policy's, and the reference pass's own line)."""
    same = peak_phase == est.peak_phase and peak == est.phase_bytes[peak_phase] + copy
    if same:
        breakdown = dict(est.breakdown)
    else:
        keys = ("weights", "trainable_weights", "optimizer_states", "gradients")
        breakdown = {k: est.breakdown.get(k, 0) for k in keys}
        at_ref = reference_pass if peak_phase == "reference_forward" else 0.0
        rest = peak - sum(breakdown.values()) - copy - at_ref
        breakdown["activations"] = int(max(rest, 0.0))
        breakdown["logits_and_loss"] = 0
        breakdown["temporaries"] = int(min(rest, 0.0))
    breakdown["reference_weights"] = int(copy)
    breakdown["reference_pass"] = int(reference_pass) if peak_phase == "reference_forward" else 0
    return breakdown


def _reference_note(stage: str, kind: str, copy: float, reference_pass: float) -> str:
    if kind == "none":
        return f"{stage} has no reference model"
    if kind == "precompute":
        return "reference log-probs precomputed before training: no reference in memory"
    what = (
        "the base with the adapters disabled (no second copy)"
        if kind == "adapter"
        else f"a frozen copy of the weights ({copy / GIB:.2f} GiB)"
    )
    return (
        f"reference: {what}; its forward (no grad) adds {reference_pass / GIB:.2f} GiB while "
        "the policy's activations are held"
    )
