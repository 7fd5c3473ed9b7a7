"""The loss's moment in a full fine-tune: the output head's weight gradient against the logits.

Backward starts at the loss. Its largest moment is the loss's own backward (log-softmax's
gradient beside the fp32 logits it came from, and a softcap's saved tanh): the `logits` term of
engine/plan/estimator.py. Only after that working set is freed does the output head's matmul
run backward, and by then the logits are down to their gradient in the head's output dtype
(the cast back from fp32 freed the rest). That is when the head's weight gradient (the input
embeddings' when they are tied) is allocated, the first gradient of a full fine-tune. So the
two do not add: the loss moment is the larger of the full logits working set (with only the
gradients of earlier micro-batches) and the head's gradient beside one logit gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.models import ModelArch
    from engine.plan.counts import ParamCounts
    from engine.training_config import TrainingConfig


def head_gradient_bytes(
    params: ParamCounts, config: TrainingConfig, b: int, gradients: float
) -> float:
    """The output head's weight gradient (0 unless a full fine-tune) as its share of
    `gradients` (every gradient, sharded as the run shards them): 16-bit for 16-bit weights,
    fp32 for fp32 masters or a head the model keeps in fp32 (engine/plan/fp32_params.py)."""
    from engine.plan.fp32_params import kept_fp32_states

    if config.method != "full":
        return 0.0
    head = params.lm_head or params.embedding
    master = config.dtype == "fp32" or not config.pure_bf16
    per_param = 4 if master else b
    wide = kept_fp32_states(params, config, b).gradients  # what fp32-kept ones add
    unsharded = (params.trainable - params.idle) * per_param + wide
    head_bytes = head * per_param + (4 - per_param) * min(params.fp32_head, head)
    return head_bytes * gradients / unsharded if unsharded > 0 else 0.0


def head_output_bytes(params: ParamCounts, config: TrainingConfig, b: int) -> int:
    """Bytes of one logit as the output head makes it: fp32 for a head the model keeps in
    fp32 (HY-V4), else the compute dtype (autocast's for fp32 master weights)."""
    head = params.lm_head or params.embedding
    kept = params.fp32_head >= head > 0 and config.dtype != "fp32"
    mixed = config.method == "full" and not config.pure_bf16 and config.dtype != "fp32"
    return 4 if kept and not mixed else b


def final_norm_bytes(arch: ModelArch, config: TrainingConfig, b: int) -> float:
    """Per token: what the final norm and the output head keep for backward, alive at the loss
    in a checkpointed run (they sit outside the checkpointed layers). RMSNorm keeps its fp32
    input (LayerNorm its input), with a trainable norm weight also the normalised 16-bit
    tensor; a trained head keeps its input, the norm's output."""
    h = arch.hidden_size
    full = config.method == "full"
    norm = (4 * h if arch.rms_norm else b * h) + (b * h if full else 0)
    return float(norm + (b * h if full else 0))


@dataclass(frozen=True)
class LossMoment:
    """The forward/backward peak at the loss and what it holds."""

    bytes: float
    gradients: float
    logits: float
    activations: float


def loss_moment(
    arch: ModelArch,
    *,
    saved: float,
    at_loss: float,
    logits: float,
    tokens: int,
    resident_grads: float,
    head_grads: float,
    logit_bytes: int,
    final: float = 0.0,
) -> LossMoment:
    """The larger of the loss's working set (`at_loss`: `saved` plus the logits, with the
    gradients resident from earlier micro-batches) and the head's gradient beside the logits'
    gradient (`logit_bytes` each, no more than the logits working set); `final`: the final
    norm's and the head's saved tensors, alive at both."""
    from engine.plan.estimator import logit_width

    gradient = min(logits, logit_bytes * logit_width(arch) * tokens)
    working = resident_grads + at_loss + final
    head_grads = max(resident_grads, head_grads)
    after = head_grads + saved + final + gradient
    if after > working:
        return LossMoment(after, head_grads, gradient, saved + final)
    return LossMoment(working, resident_grads, logits, saved + final)
