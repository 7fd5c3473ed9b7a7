"""Tier 1 of the memory estimator: an analytic model, pure Python, microseconds per estimate.

Per GPU it predicts three levels, each what a tool reports:
  allocated  torch.cuda.max_memory_allocated: live tensors at the worst moment of a step;
  reserved   torch.cuda.max_memory_reserved: allocated plus the caching allocator's slack;
  device     what nvidia-smi shows: reserved plus the CUDA context and communication buffers.

The peak is the maximum over phases (forward/backward incl. recompute, optimizer step), not a
sum of everything. Activation bytes follow what transformers' decoder layers save for backward
(see docs/estimator.md); the few multipliers in `Calibration` are fitted against dry runs
(tier 2) and measured GPU runs, never per row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.models import ModelArch
from engine.plan import loss_head
from engine.plan.activations import hyper_streams
from engine.plan.counts import (
    Linear,
    ParamCounts,
    count_params,
    decoder_linears,
    lora_targets,
    stack_notes,
)
from engine.plan.fp32_params import kept_fp32_states
from engine.plan.hostmem import HostMemory, host_memory
from engine.plan.layer_peaks import block_before_scan, stack_activations
from engine.plan.mixers import retained_graph_bytes
from engine.plan.model_code import (
    bert_style_bytes,
    carried_state_bytes,
    embed_projection_bytes,
    mask_buffer_bytes,
    recurrent_stack,
    residual_bytes,
    stack_config,
)
from engine.plan.param_lora import parameter_lora_saved_bytes, parameter_lora_transient_bytes
from engine.plan.param_targets import adapted_groups, lora_saved_input_bytes
from engine.plan.params import ParamRoles, attached_roles, closed_form_reason
from engine.training_config import PLANNED_METHODS, PREFERENCE_STAGES, TrainingConfig

GIB = 1024**3
# bitsandbytes' block sizes (the dry run's stand-ins use the same)
BNB_4BIT_BLOCKSIZE = 64  # Params4bit default: one absmax per 64 weights
BNB_NESTED_BLOCKSIZE = 256  # double quant: one fp32 absmax per 256 absmax blocks
BNB_OPTIM_BLOCKSIZE = 256  # 8-bit optimizer states: one fp32 absmax per 256 values
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
PHASES = ("forward_backward", "recompute", "optimizer_step")


@dataclass(frozen=True)
class Calibration:
    """The estimator's few fitted constants. See docs/estimator.md for how each was fitted."""

    # Caching-allocator slack: reserved = allocated * (1 + frag) + the largest block's rounding.
    reserved_frag: float = 0.08
    # CUDA context + cuBLAS/cuDNN workspaces, bytes (nvidia-smi minus reserved on an idle step).
    cuda_context_bytes: int = int(0.75 * GIB)
    # NCCL buffers and streams per process when world size > 1.
    comm_bytes: int = int(0.6 * GIB)
    # Multiplier on activation bytes (what the model cannot see: allocator temporaries in
    # kernels, autocast copies).
    activation_scale: float = 1.0
    # Bytes per logit (token x vocab entry) alive at the loss, by loss code path (see
    # LOSS_PATHS): transformers 5 keeps the compute-dtype logits, an fp32 upcast inside the
    # loss, log-softmax and its gradient; the older llama-family code also upcast in the
    # model and made a shifted fp32 copy.
    logit_bytes: float = 12.0
    legacy_logit_bytes: float = 16.0


DEFAULT_CALIBRATION = Calibration()


@dataclass(frozen=True)
class MemoryEstimate:
    allocated_bytes: int
    reserved_bytes: int
    device_bytes: int
    breakdown: dict[str, int]
    peak_phase: str
    phase_bytes: dict[str, int]
    host_bytes: int  # CPU RAM the run needs for offloaded states (0 without offload)
    params: ParamCounts
    notes: tuple[str, ...] = field(default=())
    host: HostMemory = field(default_factory=HostMemory)  # host RAM per process and node

    @property
    def allocated_gib(self) -> float:
        return self.allocated_bytes / GIB

    @property
    def reserved_gib(self) -> float:
        return self.reserved_bytes / GIB

    @property
    def device_gib(self) -> float:
        return self.device_bytes / GIB

    def to_dict(self) -> dict[str, Any]:
        return {
            "allocated_bytes": self.allocated_bytes,
            "reserved_bytes": self.reserved_bytes,
            "device_bytes": self.device_bytes,
            "allocated_gib": round(self.allocated_gib, 3),
            "reserved_gib": round(self.reserved_gib, 3),
            "device_gib": round(self.device_gib, 3),
            "breakdown_bytes": dict(self.breakdown),
            "breakdown_gib": {k: round(v / GIB, 3) for k, v in self.breakdown.items()},
            "peak_phase": self.peak_phase,
            "phase_gib": {k: round(v / GIB, 3) for k, v in self.phase_bytes.items()},
            "host_gib": round(self.host_bytes / GIB, 3),
            "host": self.host.to_dict(),
            "notes": list(self.notes),
        }


# -- states ----------------------------------------------------------------------------------


def _nf4_bytes(n: int, double_quant: bool) -> float:
    """bitsandbytes NF4: 4 bits per weight + an absmax per 64 weights (fp32; or, with double
    quantisation, uint8 plus an fp32 per 256 blocks)."""
    blocks = n / BNB_4BIT_BLOCKSIZE
    absmax = blocks * 1 + blocks / BNB_NESTED_BLOCKSIZE * 4 if double_quant else blocks * 4
    return n / 2 + absmax


def optimizer_bytes_per_param(optim: str, state_bytes: int) -> float:
    """Optimizer state per trainable parameter."""
    if optim in ("adamw_torch", "adamw_torch_fused", "paged_adamw_32bit"):
        return 2 * state_bytes
    if optim in ("adamw_8bit", "paged_adamw_8bit"):
        return 2 * (1 + 4 / BNB_OPTIM_BLOCKSIZE)  # two uint8 states + an fp32 absmax a block
    if optim == "adafactor":
        return 0.05 * state_bytes  # factored second moment: rows + cols, ~nothing per param
    return 0.0  # sgd without momentum (HF default)


def optimizer_temp_bytes_per_param(optim: str, state_bytes: int) -> float:
    """Transient memory of `optimizer.step()` per trainable parameter (foreach keeps one
    parameter-sized intermediate per group alive)."""
    if optim == "adamw_torch":
        return state_bytes
    if optim == "adafactor":
        return state_bytes
    return 0.0


# -- activations -----------------------------------------------------------------------------


# The MLP's Linears by the names transformers gives them: a layer's last modules, run when the
# rest of its saved tensors are alive (a mixer's wide input projections run at its start)
MLP_LINEARS = frozenset(
    {"gate_proj", "up_proj", "down_proj", "fc1", "fc2", "c_fc", "w1", "w2", "w3", "dense_h_to_4h",
     "dense_4h_to_h", "gate_up_proj", "fc_in", "fc_out", "wi", "wo", "c_proj", "w_0", "w_1",
     "w_out", "input_linear", "output_linear"}
)  # fmt: skip


def lora_output_transient_bytes(roles: ParamRoles, config: TrainingConfig) -> float:
    """Per token: what PEFT's LoRA forward of the widest adapted MLP Linear holds for a moment
    while backward recomputes its layer. The adapters run in fp32, so `result + lora_B(
    lora_A(x)) * scaling` makes two fp32 tensors of the output's width (the scaled update and
    the sum) before the sum is cast back to the compute dtype."""
    if config.method not in ("lora", "qlora") or config.dora:
        return 0.0
    widths = [
        group.out_features / max(group.modules, 1)
        for group in adapted_groups(roles, config)
        if not group.tower and not group.expert and group.name in MLP_LINEARS
    ]
    return 8 * max(widths, default=0.0)


def _lora_saved_bytes(arch: ModelArch, config: TrainingConfig) -> float:
    """Per token per layer: PEFT runs adapters in fp32, so each adapted module keeps an fp32
    copy of its input (and the rank-r intermediate; DoRA its output)."""
    roles = attached_roles(arch) if config.is_peft else None
    if roles is not None:
        return lora_saved_input_bytes(roles, arch, config)
    total = 0.0
    if config.is_peft:
        k = arch.experts_per_token if arch.is_moe else 1
        for lin in lora_targets(arch, config):
            share = k if lin.count > 1 else 1
            total += share * (4 * lin.in_features + 4 * config.rank)
            if config.dora:
                total += share * 4 * lin.out_features
    return total


def stack_activation_bytes(arch: ModelArch, config: TrainingConfig, b: int) -> tuple[float, float]:
    """Bytes per token saved for backward (no checkpointing): every layer together, and the
    largest single layer. Each layer by its kind (engine/plan/activations.py)."""
    roles = attached_roles(arch) if config.is_peft else None
    transient = lora_output_transient_bytes(roles, config) if roles is not None else 0.0
    stack = stack_activations(arch, config, b, forward_extra=transient)
    lora = _lora_saved_bytes(arch, config)  # summed over the modules, per num_layers
    recurrent = recurrent_stack(arch)
    if recurrent is not None:  # per physical layer, each run of which keeps its own
        lora *= max(arch.num_layers, 1) / recurrent[0]
    largest = lora
    if roles is not None and block_before_scan(arch):  # Zamba's hybrid layer runs them all
        largest = lora_saved_input_bytes(roles, arch, config, every_module=True)
    return stack.total + lora * max(arch.num_layers, 1), stack.largest + largest


def layer_activation_bytes(arch: ModelArch, config: TrainingConfig, b: int) -> float:
    """Bytes saved for backward per token by the average decoder layer (no checkpointing)."""
    return stack_activation_bytes(arch, config, b)[0] / max(arch.num_layers, 1)


# How the loss was computed: "v5" is ftui's stack (transformers 5: every causal LM upcasts
# logits inside the shared loss function); "legacy" is transformers 4.3x-4.45 llama-family
# code (upcast in the model plus a shifted copy); "compute" ran the loss in the compute dtype
# (older gpt_bigcode and bloom code).
LOSS_PATHS = ("v5", "legacy", "compute")


# Inkling 2 pads its embedding table (vocab_size) but builds its lm_head
# `unpadded_vocab_size` wide, then upcasts the logits before softcapping them; Inkling 1's
# lm_head is vocab_size wide (sliced after), so it keeps vocab_size
INKLING2 = frozenset({"inkling2", "inkling2_text", "inkling2_loop", "inkling2_loop_text"})
# models whose transformers code upcasts the logits before softcapping them (BeamForCausalLM:
# "bf16 tanh quantizes badly near saturation"; Inkling 2's `lm_head(h).float()`)
FP32_SOFTCAP = frozenset({"beam"}) | INKLING2


def logit_width(arch: ModelArch) -> int:
    """How many logits the lm_head makes per token (see INKLING2)."""
    unpadded = arch.text_config.get("unpadded_vocab_size")
    if arch.model_type in INKLING2 and isinstance(unpadded, int) and unpadded > 0:
        return unpadded
    return arch.vocab_size


def logits_bytes_per_token(
    arch: ModelArch, b: int, calibration: Calibration, loss_path: str = "v5"
) -> float:
    """Logits and loss bytes per token (see LOSS_PATHS)."""
    if loss_path == "compute":
        return logit_width(arch) * 2 * b  # b: the lm_head's dtype
    per_logit = calibration.legacy_logit_bytes if loss_path == "legacy" else calibration.logit_bytes
    # final logit softcapping (Gemma 2, nanochat): tanh(logits / cap) * cap keeps the tanh's
    # output for backward, a second copy of the logits (fp32 where the model softcaps in fp32)
    softcap = 0
    if arch.text_config.get("final_logit_softcapping"):
        softcap = 4 if arch.model_type in FP32_SOFTCAP else b
    return logit_width(arch) * (max(per_logit, b + 8) + softcap)


@dataclass(frozen=True)
class _States:
    weights: float
    trainable_weights: float
    gradients: float
    optimizer: float
    optimizer_temp: float
    host: HostMemory
    gathered_params: float  # ZeRO-3/FSDP: full weights of the layers being computed
    notes: tuple[str, ...]


def _states(arch: ModelArch, config: TrainingConfig, params: ParamCounts) -> _States:
    b = DTYPE_BYTES[config.dtype]
    n = config.num_gpus
    notes: list[str] = []
    full = config.method == "full"
    mixed = full and config.dtype != "fp32" and not config.pure_bf16
    weight_bytes = 4 if (mixed or config.dtype == "fp32") else b

    if config.method == "qlora":
        kept = 4 if config.kbit_upcast else b  # non-quantised params
        frozen = _nf4_bytes(params.linear, config.double_quant) + kept * (
            params.embedding + params.lm_head + params.other
        )
    elif config.method == "lora":
        frozen = b * (params.total - params.lora)
    else:
        frozen = 0.0
    trainable_weight_bytes = 4 if config.is_peft else weight_bytes
    trainable: float = params.trainable * trainable_weight_bytes
    updated = params.trainable - params.idle  # towers text never reaches get no gradient
    grads: float = updated * trainable_weight_bytes
    state_bytes = 4 if (config.is_peft or mixed or config.dtype == "fp32") else b
    optim = updated * optimizer_bytes_per_param(config.optim, state_bytes)
    temp = updated * optimizer_temp_bytes_per_param(config.optim, state_bytes)
    wide = kept_fp32_states(params, config, b)  # parameters a 16-bit model keeps in fp32
    frozen += wide.frozen
    trainable += wide.trainable
    grads += wide.gradients
    optim += wide.optimizer
    temp += wide.optimizer_temp
    if mixed:
        # autocast keeps a compute-dtype copy of every weight it casts for the backward pass.
        notes.append("mixed precision: fp32 master weights, bf16 copies cached by autocast")

    sharding = config.sharding
    deepspeed = sharding.startswith("zero")
    if deepspeed and not config.is_peft and not mixed and config.dtype != "fp32":
        # DeepSpeed's bf16/fp16 optimizer steps an fp32 master copy: its states are fp32 too.
        optim = updated * (4 + optimizer_bytes_per_param(config.optim, 4))
        notes.append("DeepSpeed keeps fp32 master weights in the optimizer")
    gathered = 0.0
    offload = config.offload
    if sharding == "fsdp" and offload == "optimizer":
        # FSDP offloads parameters (with their gradients and optimizer step) or nothing.
        notes.append("FSDP cannot offload the optimizer alone: this runs without offload")
        offload = "none"
    if n > 1 and sharding != "none":
        if sharding in ("zero1", "zero2", "zero3", "fsdp"):
            optim /= n
            temp /= n
        if sharding in ("zero2", "zero3", "fsdp"):
            grads /= n
        if sharding in ("zero3", "fsdp"):
            frozen /= n
            trainable /= n
            # Two layers gathered at a time (current + prefetch), and the root unit
            # (embeddings, lm_head) kept whole through forward and backward.
            gathered = 2 * params.per_layer_linear * (0.5 if config.method == "qlora" else b)
            gathered += (params.embedding + params.lm_head) * b * (n - 1) / n
    elif sharding != "none":
        notes.append(f"{sharding} on one GPU shards nothing")
    host = host_memory(
        num_gpus=n,
        sharding=sharding,
        offload=offload,
        optimizer_states=optim,
        master_weights=0.0,  # DeepSpeed's fp32 master copy is counted in `optim` above
        gradients_fp32=params.trainable * 4 / max(n, 1),
        weights=frozen + trainable,
        gradients=grads,
    )
    if offload in ("optimizer", "params"):
        optim = 0.0
        temp = 0.0
    if offload == "params":
        frozen = 0.0
        trainable = 0.0
        if sharding == "fsdp":
            grads = 0.0  # FSDP moves each gradient shard to the host as it is reduced
    return _States(
        weights=frozen,
        trainable_weights=trainable,
        gradients=grads,
        optimizer=optim,
        optimizer_temp=temp,
        host=host,
        gathered_params=gathered,
        notes=tuple(notes),
    )


def reserved_and_overhead(
    arch: ModelArch,
    config: TrainingConfig,
    calibration: Calibration,
    *,
    allocated: float,
    logits: float,
    tokens: int,
    b: int,
) -> tuple[float, float]:
    """(reserved, overhead beyond it): the caching allocator's slack on the allocated peak
    plus half its largest block's rounding; the CUDA context, and NCCL's buffers when more
    than one process trains."""
    largest_block = max(logits / 2, tokens * b * arch.intermediate_size, 2 * 1024**2)
    reserved = allocated * (1 + calibration.reserved_frag) + largest_block * 0.5
    overhead = calibration.cuda_context_bytes + (
        calibration.comm_bytes if config.num_gpus > 1 else 0
    )
    return reserved, overhead


def estimate_memory(
    arch: ModelArch,
    config: TrainingConfig,
    calibration: Calibration = DEFAULT_CALIBRATION,
    *,
    correction: float = 1.0,
    loss_path: str = "v5",
) -> MemoryEstimate:
    """Peak memory per GPU for one configuration. `correction` multiplies the allocated peak
    (a measured probe's ratio, stored per setup)."""
    if config.stage in PREFERENCE_STAGES:  # pairs, the reference pass: engine/plan/stages.py
        from engine.plan.stages import preference_memory

        return preference_memory(  # type: ignore[no-any-return]
            arch, config, calibration, correction=correction, loss_path=loss_path
        )
    if config.method not in PLANNED_METHODS or config.base_bits != 16:
        from engine.plan.method_memory import family_memory  # the rest of the PEFT family

        return family_memory(arch, config, calibration, correction=correction, loss_path=loss_path)
    b = DTYPE_BYTES[config.dtype]
    params = count_params(arch, config)
    states = _states(arch, config, params)
    notes = list(states.notes)
    tokens = config.tokens_per_micro_batch
    h = arch.hidden_size
    recurrent = recurrent_stack(arch)
    n_layers = recurrent[1] if recurrent is not None else arch.num_layers  # layer runs

    layers_config = stack_config(arch, config)
    stack_tokens = layers_config.tokens_per_micro_batch  # the decoder stack's positions
    stack_bytes, largest_layer = stack_activation_bytes(arch, layers_config, b)
    per_layer = stack_bytes / max(arch.num_layers, 1) * calibration.activation_scale
    largest_layer *= calibration.activation_scale
    mixed = config.method == "full" and config.dtype != "fp32" and not config.pure_bf16
    upcast = config.method == "qlora" and config.kbit_upcast
    # the residual stream follows the embeddings' dtype (or the model keeps it in fp32)
    residual = 4 if upcast else residual_bytes(arch, b)
    logits = logits_bytes_per_token(arch, 4 if upcast else b, calibration, loss_path) * tokens
    cast_weights = params.per_layer_linear * b if mixed else 0.0  # autocast's weight copies
    embeddings, head = bert_style_bytes(arch, config, residual)
    projected_in, projected_out = embed_projection_bytes(arch, config, b)
    embeddings += projected_in
    head += projected_out
    logits += head * tokens  # the head's transform, freed with the logits
    roles = attached_roles(arch)
    ckpt = config.grad_ckpt and (roles is None or roles.checkpointing)  # CTRL cannot
    if ckpt:
        # Checkpoints keep each layer's input. The loss is computed with only those alive;
        # later, backward recomputes one layer at a time and holds its activations plus the
        # gradient flowing through it (the logits are gone by then).
        # (with hyper-connections the stream between layers is hc_mult hidden vectors wide)
        stream = h * hyper_streams(arch)
        # beside the stream, the state a layer hands the next (ZAYA's router state)
        carried = max(n_layers - 1, 0) * carried_state_bytes(arch, b)
        saved: float = (n_layers * residual * stream + carried + embeddings) * stack_tokens
        at_loss = saved + logits
        # the gradient arriving from the layer above is as wide as the stream; the layer's
        # own hidden-sized gradients are not
        working = (
            largest_layer * stack_tokens
            + residual * (4 * h + stream - h) * stack_tokens
            + cast_weights
        )
        if roles is not None:  # LoRA on fused experts: W + BA of the layer backward runs
            working += parameter_lora_transient_bytes(roles, config, b)
        at_recompute = saved + working
    else:
        stream = h * hyper_streams(arch)
        saved = n_layers * (per_layer * stack_tokens + cast_weights)
        saved += (2 * residual * stream + embeddings) * stack_tokens
        if roles is not None:
            saved += parameter_lora_saved_bytes(roles, config, b)
        # the last layer's widest LoRA forward, with every layer's saved tensors alive, or the
        # loss, whichever is larger
        transient = lora_output_transient_bytes(roles, config) if roles is not None else 0.0
        at_loss = saved + max(logits, transient * tokens)
        at_recompute = 0.0

    # Gradients of embeddings/lm_head land early in backward; the rest grow as activations
    # are freed. With accumulation, the previous micro-batches' gradients are resident.
    resident_grads = states.gradients if config.grad_accum > 1 else 0.0
    early_grads = loss_head.head_gradient_bytes(params, config, b, states.gradients)
    fb_grads = max(resident_grads, early_grads)
    # the head's gradient comes once the loss's working set is freed (engine/plan/loss_head.py)
    moment = loss_head.loss_moment(
        arch, saved=saved, at_loss=at_loss, logits=logits, tokens=tokens,
        resident_grads=resident_grads, head_grads=early_grads,
        logit_bytes=loss_head.head_output_bytes(params, config, b),
        final=loss_head.final_norm_bytes(arch, config, residual) * tokens if ckpt else 0.0,
    )  # fmt: skip
    # backward recomputes the first layers last: by then every layer above has its gradient
    recompute_grads = max(fb_grads, states.gradients * (1 - 1 / max(n_layers, 1)))
    # DDP keeps gradient buckets as a second copy of the gradients.
    ddp_buckets = states.gradients if config.num_gpus > 1 and config.sharding == "none" else 0.0
    buffers = mask_buffer_bytes(arch)
    base = (
        buffers
        + states.weights
        + states.trainable_weights
        + states.optimizer
        + states.gathered_params
        + ddp_buckets
    )
    optimizer_step = (
        buffers
        + states.weights
        + states.trainable_weights
        + states.gradients
        + ddp_buckets
        + states.optimizer
        + states.optimizer_temp
    )
    # graphs modules keep on themselves after backward (engine.plan.mixers)
    kept, kept_layers = retained_graph_bytes(arch, config, b)
    optimizer_step += kept * kept_layers * tokens
    at_recompute += kept * max(kept_layers - 1, 0) * tokens if ckpt else 0.0
    phase_bytes = {
        "forward_backward": base + moment.bytes,
        "recompute": base + recompute_grads + at_recompute if ckpt else 0.0,
        "optimizer_step": optimizer_step,
    }
    peak_phase = max(phase_bytes, key=lambda k: phase_bytes[k])
    allocated = phase_bytes[peak_phase] * correction

    common = {
        "weights": states.weights
        + buffers
        + (states.gathered_params if peak_phase != "optimizer_step" else 0),
        "trainable_weights": states.trainable_weights,
        "optimizer_states": states.optimizer,
    }
    if peak_phase == "forward_backward":
        breakdown = {
            **common,
            "gradients": moment.gradients + ddp_buckets,
            "activations": moment.activations,
            "logits_and_loss": moment.logits,
            "temporaries": 0.0,
        }
    elif peak_phase == "recompute":
        breakdown = {
            **common,
            "gradients": recompute_grads + ddp_buckets,
            "activations": at_recompute,
            "logits_and_loss": 0.0,
            "temporaries": 0.0,
        }
    else:
        breakdown = {
            **common,
            "gradients": states.gradients + ddp_buckets,
            "activations": 0.0,
            "logits_and_loss": 0.0,
            "temporaries": states.optimizer_temp,
        }
    if correction != 1.0:
        breakdown["temporaries"] += allocated - phase_bytes[peak_phase]
        notes.append(f"probe correction x{correction:.3f} applied")

    reserved, overhead = reserved_and_overhead(
        arch, config, calibration, allocated=allocated, logits=logits, tokens=tokens, b=b
    )
    breakdown["overhead"] = reserved - allocated + overhead
    device = reserved + overhead
    if config.optim.startswith("paged_"):
        notes.append("paged optimizer states live in unified memory and can spill to CPU RAM")
    notes.extend(stack_notes(arch, config))
    reason = closed_form_reason(arch)
    if reason is not None:
        notes.append(f"parameter counts from the closed form: {reason}")
    return MemoryEstimate(
        allocated_bytes=int(allocated),
        reserved_bytes=int(reserved),
        device_bytes=int(device),
        breakdown={k: int(v) for k, v in breakdown.items()},
        peak_phase=peak_phase,
        phase_bytes={k: int(v) for k, v in phase_bytes.items()},
        host_bytes=states.host.offloaded_bytes,
        params=params,
        notes=tuple(notes),
        host=states.host,
    )


__all__ = [
    "DEFAULT_CALIBRATION",
    "GIB",
    "Calibration",
    "Linear",
    "MemoryEstimate",
    "ParamCounts",
    "count_params",
    "decoder_linears",
    "estimate_memory",
    "layer_activation_bytes",
    "lora_targets",
]
