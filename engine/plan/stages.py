"""Memory and speed of the preference stages, on top of the SFT estimate.

- Paired stages (DPO, ORPO, SimPO) put chosen and rejected through the model in one batch: the
  policy's micro-batch is twice the pairs.
- DPO and KTO compare with a reference model. TRL runs the reference forward (no grad) after the
  policy's forward, while the policy's saved activations are alive: that phase holds them plus
  one layer's working activations of the reference pass. With adapters the reference is the
  same weights with the adapters disabled; a full fine-tune holds a frozen copy of the weights
  in the policy's dtype (TRL builds it with `dtype=model.dtype`: fp32 when mixed precision keeps
  fp32 master weights), unless the reference log-probs are precomputed before training.
- DPO and KTO compute the log-probs with TRL's fused LM head (`add_fused_lm_head`): no full
  logits, but a copy of the last hidden states (saved), a logits tile of up to 4096 tokens x
  32768 vocabulary entries in the compute dtype, and in backward an fp32 gradient of the hidden
  states and, when the LM head trains (full fine-tune), an fp32 gradient of its weight.
- KTO also runs the KL completions through the policy (no grad) and the reference: three extra
  forwards per trained token.
- ORPO and SimPO have no reference. Their trainers make the full logits, which accelerate's
  mixed-precision wrapper returns in fp32 (4 bytes per logit, the 16-bit ones freed), and take
  the log-probs with TRL's Triton kernel, whose backward writes one fp32 gradient of the
  logits (4): 8 bytes per logit for SimPO (ftui's default `simpo` loss has no NLL term; the
  `cpo_simpo` loss adds one, as ORPO does). ORPO adds the NLL of the chosen half: a contiguous
  fp32 copy of its logits and their log-softmax, with gradients: 4 more per logit of the batch.

The dry run (engine/plan/dryrun/stages.py) runs TRL's step on fake tensors; the agreement is
tested in tests/engine/test_dryrun_stages.py.
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
# The fused head's tile: tokens x vocabulary entries (trl/trainer/utils.py, trl/kernels).
FUSED_TILE_TOKENS = 4096
FUSED_TILE_VOCAB = 32768
FUSED_FP32_PER_TOKEN = 10  # running max/sums, log-probs, entropy, mean logit, top-1: fp32 each
# Bytes per logit of the stages that make the full logits (see the module docstring).
PAIRED_LOGIT_BYTES = {"orpo": 12, "simpo": 8}


DTYPE_BYTES_OF = {"bf16": 2, "fp16": 2, "fp32": 4}  # as the estimator's (imported lazily)


def reference_weight_bytes(config: TrainingConfig) -> int:
    """Bytes per parameter of TRL's frozen reference copy: the policy's weights dtype."""
    mixed = config.method == "full" and config.dtype != "fp32" and not config.pure_bf16
    return 4 if mixed else DTYPE_BYTES_OF[config.dtype]


def fused_head_bytes(
    arch: ModelArch, config: TrainingConfig, tokens: int
) -> tuple[float, float, float]:
    """TRL's fused LM head for `tokens`: (saved, forward, backward) bytes. Saved: its copy of the
    last hidden states. Forward: the copy, the tile and the per-token numbers. Backward: the
    copy, the tile, the fp32 hidden gradient and, when the head trains (a full fine-tune), the
    fp32 gradient of its weight."""
    b = DTYPE_BYTES_OF[config.dtype]
    h, vocab = arch.hidden_size, arch.vocab_size
    hidden = float(tokens * h * (4 if config.method == "qlora" and config.kbit_upcast else b))
    tile = min(tokens, FUSED_TILE_TOKENS) * min(vocab, FUSED_TILE_VOCAB) * b
    forward = hidden + tile + FUSED_FP32_PER_TOKEN * 4 * tokens
    head_grad = vocab * h * 4 if config.method == "full" else 0
    backward = hidden + tile + tokens * h * 4 + head_grad
    return hidden, forward, backward


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
    copy_bytes = reference_weight_bytes(config) if config.method == "full" else b
    copy = est.params.total * copy_bytes / shards if kind == "copy" else 0.0
    phases = {k: float(v) + copy for k, v in est.phase_bytes.items() if v}
    logits = logits_bytes_per_token(arch, b, calibration, loss_path) * tokens
    head_saved = loss = 0.0
    if config.stage in FUSED_LOG_PROBS:  # log-probs in tiles: no full logits
        head_saved, head_forward, head_backward = fused_head_bytes(arch, config, tokens)
        loss = max(head_forward, head_backward)
    else:  # full logits, in fp32, and the log-prob kernel
        loss = float(PAIRED_LOGIT_BYTES[config.stage] * arch.vocab_size * tokens)
    phases["forward_backward"] += loss - logits
    reference_pass = 0.0
    if kind in ("adapter", "copy"):
        per_layer = layer_activation_bytes(arch, policy, b) * calibration.activation_scale
        layer_pass = per_layer * tokens + 2 * arch.hidden_size * tokens * b
        # the reference's own fused head (no grad): its hidden copy, tile and numbers
        reference_pass = max(layer_pass, fused_head_bytes(arch, config, tokens)[1])
        phases["reference_forward"] = (
            est.phase_bytes["forward_backward"] - logits + head_saved + reference_pass + copy
        )
    peak_phase = max(phases, key=lambda k: phases[k])
    allocated = phases[peak_phase] * correction
    grow = allocated - est.allocated_bytes
    reserved = est.reserved_bytes + grow * (1 + calibration.reserved_frag)
    device = reserved + (est.device_bytes - est.reserved_bytes)
    breakdown = _breakdown(est, peak_phase, phases[peak_phase], copy, reference_pass, loss)
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
    est: Any, peak_phase: str, peak: float, copy: float, reference_pass: float, loss: float
) -> dict[str, int]:
    """The SFT estimate's parts at the new peak: what the phase holds beyond the states is the
    stage's logits or log-probs (`loss`, at the end of the forward) and activations (the
    policy's, and the reference pass's own line)."""
    same = peak_phase == est.peak_phase and peak == est.phase_bytes[peak_phase] + copy
    if same:
        breakdown = dict(est.breakdown)
    else:
        keys = ("weights", "trainable_weights", "optimizer_states", "gradients")
        breakdown = {k: est.breakdown.get(k, 0) for k in keys}
        at_ref = reference_pass if peak_phase == "reference_forward" else 0.0
        at_loss = loss if peak_phase == "forward_backward" else 0.0
        rest = peak - sum(breakdown.values()) - copy - at_ref - at_loss
        breakdown["activations"] = int(max(rest, 0.0))
        breakdown["logits_and_loss"] = int(at_loss)
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
