"""Tier 1's memory of the PEFT family beyond LoRA / QLoRA / full: each method's trainable
parameters, their gradients and optimizer states, the weights it keeps, and the activations
it adds or removes. engine/plan/estimator.py hands every such config here.

Facts from the installed libraries (PEFT 0.21, bitsandbytes 0.50, transformers 5):
  prefix       PrefixEncoder without projection: an Embedding(n, layers x 2 x kv width), fp32
               (GQA: PEFT sizes the prefix by the key/value heads). Each layer's attention sees
               n more keys and values (a DynamicCache concatenates them). Gradient checkpointing
               drops the cache: ftui refuses the pair.
  prompt       PromptEmbedding(n, hidden), fp32; the n trained embeddings go in front of the
               input, so every activation and the logits cover seq + n positions.
  ptuning      PromptEncoder: Embedding(n, hidden) and an MLP hidden -> E -> E -> hidden
               (E = PTUNING_ENCODER_HIDDEN, with biases), fp32; seq + n positions as prompt.
  ia3          a fp32 vector per adapted module (PEFT's per-model-type defaults): output-sized
               scaling the output of attention modules (the multiply keeps that output),
               input-sized scaling the input of feed-forward ones (an fp32 copy of it kept).
  llama-adapter  an adaption prompt (1, n, hidden) and a gate in the top LLAMA_ADAPTER_LAYERS
               layers, in the weights' dtype; each recomputes its queries and attends to the
               n prompt positions.
  bias, freeze the model's own weights, loaded in fp32 (mixed precision) like a full
               fine-tune. autocast casts each weight to 16 bits per use and keeps the copy for
               backward where the input needs a gradient (it caches only trainable weights).
               bias: gradients flow through every layer; freeze: backward stops at the lowest
               trainable layer (with gradient checkpointing ftui makes inputs require grads,
               so every layer keeps its checkpoint and replays).
  8-bit base   bitsandbytes' Linear8bitLt: int8 weights (1 byte each) and an fp32 scale per
               output row; MatMul8bitLt keeps every linear's input (A) and its outlier columns
               (subA) for backward, as ctx attributes (gradient checkpointing cannot free
               them), and backward dequantises the whole weight to the input's dtype for the
               input's gradient.

Light to import: no torch, no peft.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from engine.models import ModelArch
from engine.plan.counts import ParamCounts, count_params, tower_params
from engine.plan.fp32_params import kept_fp32_states
from engine.plan.hostmem import host_memory
from engine.plan.model_code import carried_state_bytes, residual_bytes
from engine.training_config import TrainingConfig

if TYPE_CHECKING:
    from engine.plan.estimator import Calibration, MemoryEstimate

# The share of a linear's input columns taken to carry outliers (|x| > 6) in LLM.int8: it
# depends on the data (a handful of feature dimensions in the LLM.int8 paper); the dry run's
# stand-in uses the same share.
INT8_OUTLIER_FRACTION = 0.01
# P-tuning's encoder width and llama-adapter's layer count, as the real run configures them
# (engine/plan/peft_setup.py imports these).
PTUNING_ENCODER_HIDDEN = 128
LLAMA_ADAPTER_LAYERS = 8
# PEFT's IA3 defaults per causal-LM model type (peft/utils/constants.py): (targets,
# feed-forward), by the HF names of _widths. Other model types have none: ftui refuses IA3.
IA3_MODULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "llama": (("k_proj", "v_proj", "down_proj"), ("down_proj",)),
    "mistral": (("k_proj", "v_proj", "down_proj"), ("down_proj",)),
    "llama4": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),
    "gemma": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),
    "gemma2": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),
    "gemma3_text": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),
    "qwen2": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),
    "qwen3": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),
    "phi": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),  # fc2 = the down projection
    "opt": (("q_proj", "k_proj", "down_proj"), ("down_proj",)),
    # transformers 5 fuses Mixtral's experts into 3-D tensors: PEFT's w2 matches none
    "mixtral": (("k_proj", "v_proj"), ()),
    "gptj": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),  # fc_out
    "gpt_neo": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),  # mlp.c_proj
    # fused q/k/v: c_attn, query_key_value; the MLP's output projection
    "gpt2": (("qkv", "down_proj"), ("down_proj",)),
    "gpt_bigcode": (("qkv", "down_proj"), ("down_proj",)),
    "gpt_neox": (("qkv", "down_proj"), ("down_proj",)),
    "bloom": (("qkv", "down_proj"), ("down_proj",)),
    "falcon": (("qkv", "down_proj"), ("down_proj",)),
    "RefinedWeb": (("qkv", "down_proj"), ("down_proj",)),
    "RefinedWebModel": (("qkv", "down_proj"), ("down_proj",)),
}
IA3_FALLBACK = IA3_MODULES["llama"]
# Model types whose every linear carries a bias (BitFit trains them all).
LINEAR_BIAS_TYPES = ("gpt2", "gpt_neox", "gpt_bigcode", "opt", "bloom", "phi", "starcoder2")


@dataclass(frozen=True)
class MethodShape:
    """What one method adds to a frozen (or fp32-master) base, in the estimator's units."""

    trainable: int  # parameters
    adapter: int  # parameters added to the model (0 for bias / freeze: its own weights)
    trainable_bytes: int  # bytes per trainable parameter (weights, gradients, Adam states)
    extra_positions: int  # prompt / P-tuning: virtual tokens in front of every sequence
    extra_keys: int  # prefix: keys and values every layer's attention sees in addition
    per_token_layer: float  # activation bytes per token per layer the method adds
    backward_layers: int  # layers whose activations are kept for backward (no checkpointing)


def _widths(arch: ModelArch) -> dict[str, tuple[int, int]]:
    """(in, out) of each decoder linear by HF name."""
    h, f = arch.hidden_size, arch.intermediate_size
    qd, kvd = arch.num_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim
    return {
        "q_proj": (h, qd), "k_proj": (h, kvd), "v_proj": (h, kvd), "o_proj": (qd, h),
        "gate_proj": (h, f), "up_proj": (h, f), "down_proj": (f, h),
        "qkv": (h, qd + 2 * kvd),  # fused (GPT-2's c_attn, GPT-NeoX's query_key_value)
    }  # fmt: skip


def _separate_linears(arch: ModelArch) -> list[tuple[int, int]]:
    """(in, out) of the linears one decoder layer really has (q, k, v apart; gate if gated)."""
    names = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
    names += ["gate_proj"] if arch.gated_mlp else []
    widths = _widths(arch)
    return [widths[name] for name in names]


def ia3_modules(model_type: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return IA3_MODULES.get(model_type, IA3_FALLBACK)


def bias_params_per_layer(arch: ModelArch) -> int:
    """Bias terms of one decoder layer (BitFit trains these)."""
    cfg = arch.text_config
    widths = _widths(arch)
    names: list[str] = []
    if arch.model_type in LINEAR_BIAS_TYPES:  # every linear has a bias
        names += ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
    elif cfg.get("attention_bias") is True:
        names += ["q_proj", "k_proj", "v_proj", "o_proj"]
    elif arch.model_type in ("qwen2", "qwen2_moe", "qwen2_vl"):
        names += ["q_proj", "k_proj", "v_proj"]
    if cfg.get("mlp_bias") is True and arch.model_type not in LINEAR_BIAS_TYPES:
        names += (
            ["gate_proj", "up_proj", "down_proj"] if arch.gated_mlp else ["up_proj", "down_proj"]
        )
    count = sum(widths[name][1] for name in names)
    if not arch.rms_norm:
        count += 2 * arch.hidden_size  # LayerNorm biases
    return count


def method_shape(arch: ModelArch, config: TrainingConfig, per_layer_params: int) -> MethodShape:
    """The method's trainable parameters and activation changes (see the module docstring)."""
    h, n_layers, n = arch.hidden_size, arch.num_layers, config.virtual_tokens
    kvd = arch.num_kv_heads * arch.head_dim
    b = 4 if config.dtype == "fp32" else 2
    widths = _widths(arch)
    method = config.method
    if method == "prefix":
        count = n * n_layers * 2 * kvd
        return MethodShape(count, count, 4, 0, n, 0.0, n_layers)
    if method in ("prompt", "ptuning"):
        count = n * h
        if method == "ptuning":
            e = PTUNING_ENCODER_HIDDEN
            count += (h * e + e) + (e * e + e) + (e * h + h)
        return MethodShape(count, count, 4, n, 0, 0.0, n_layers)
    if method == "ia3":
        targets, feedforward = ia3_modules(arch.model_type)
        count = 0
        saved = 0.0
        for name in targets:
            fan_in, fan_out = widths.get(name, (h, h))
            if name in feedforward:
                count += fan_in
                saved += 4 * fan_in  # x.to(fp32), kept by the multiply
            else:
                count += fan_out
                saved += b * fan_out  # the base output, kept by the multiply
        return MethodShape(count * n_layers, count * n_layers, 4, 0, 0, saved, n_layers)
    if method == "llama-adapter":
        layers = min(LLAMA_ADAPTER_LAYERS, n_layers)
        count = layers * (n * h + 1)
        qd = arch.num_heads * arch.head_dim
        # recomputed queries (post-RoPE), the scores: fp32 softmax, its 16-bit cast and the
        # gated copy, the adapter's output before o_proj
        per_layer = b * qd + arch.num_heads * n * (4 + 2 * b) + b * qd
        # without checkpointing nothing below the adapted layers needs a gradient
        return MethodShape(count, count, b, 0, 0, per_layer, layers)
    if method == "bias":
        count = bias_params_per_layer(arch) * n_layers
        return MethodShape(count, 0, 4, 0, 0, 0.0, n_layers)
    if method == "freeze":
        layers = min(config.trainable_layers, n_layers)
        return MethodShape(layers * per_layer_params, 0, 4, 0, 0, 0.0, layers)
    raise ValueError(f"{method} has no method shape")


def int8_weight_bytes(arch: ModelArch, linear_params: int) -> float:
    """LLM.int8 weights: 1 byte each plus an fp32 scale (SCB) per output row."""
    rows = sum(out for _, out in _separate_linears(arch)) * arch.num_layers
    return linear_params + 4 * rows


def int8_saved_bytes(arch: ModelArch, b: int) -> float:
    """Per token per layer: what MatMul8bitLt keeps that a 16-bit frozen linear does not,
    the inputs of q/k/v (one norm output), o_proj, gate/up (one) and down_proj, and every
    linear's outlier columns."""
    widths = _widths(arch)
    inputs = 2 * arch.hidden_size + widths["o_proj"][0] + widths["down_proj"][0]
    linears = _separate_linears(arch)
    outliers = sum(math.ceil(fan_in * INT8_OUTLIER_FRACTION) for fan_in, _ in linears)
    return b * (inputs + outliers)


def int8_backward_bytes(arch: ModelArch, b: int) -> float:
    """The largest weight backward dequantises at once (CB * SCB / 127, the input's dtype)."""
    return float(max(i * o for i, o in _separate_linears(arch)) * b)


def with_positions(config: TrainingConfig, extra: int) -> TrainingConfig:
    """The config whose sequences are `extra` positions longer (prompt / P-tuning)."""
    return replace(config, seq_len=config.seq_len + extra) if extra else config


def describe(shape: MethodShape, config: TrainingConfig) -> list[str]:
    """Notes for the plan: what the method adds."""
    notes: list[str] = []
    if shape.extra_positions:
        notes.append(
            f"{config.method}: {shape.extra_positions} virtual tokens in front of every "
            f"sequence: activations and logits cover {config.seq_len + shape.extra_positions} "
            "positions"
        )
    if shape.extra_keys:
        notes.append(
            f"prefix: every layer's attention sees {shape.extra_keys} trained keys and values"
        )
    if config.method == "freeze":
        stop = (
            "every layer keeps its checkpoint (inputs require gradients)"
            if config.grad_ckpt
            else "backward stops at the lowest of them"
        )
        notes.append(f"freeze: the last {shape.backward_layers} layers train; {stop}")
    if config.method in ("bias", "freeze") and not config.pure_bf16 and config.dtype != "fp32":
        notes.append(f"{config.method}: fp32 master weights (--pure-bf16 keeps them in bf16)")
    if config.method == "bias":
        notes.append("bias: gradients flow through every layer")
    return notes


def family_memory(
    arch: ModelArch,
    config: TrainingConfig,
    calibration: Calibration,
    *,
    correction: float = 1.0,
    loss_path: str = "v5",
) -> MemoryEstimate:
    """Peak memory per GPU of a PEFT-family config (a method beyond full / LoRA / QLoRA, or
    LoRA on an 8-bit base), with the estimator's phases and levels."""
    from engine.plan import estimator as est

    b = est.DTYPE_BYTES[config.dtype]
    n_layers, h = arch.num_layers, arch.hidden_size
    int8 = config.is_peft and config.base_bits == 8
    base = count_params(arch, config if int8 else None)
    mixed = config.method in ("bias", "freeze") and config.dtype != "fp32" and not config.pure_bf16
    weight_bytes = 4 if mixed or config.dtype == "fp32" else b
    notes: list[str] = []
    extra_positions = extra_keys = 0
    if int8:
        params = base
        frozen = int8_weight_bytes(arch, base.linear) + b * (
            base.embedding + base.lm_head + base.other
        )
        trainable_bytes = 4
        per_layer = est.layer_activation_bytes(arch, config, b) + int8_saved_bytes(arch, b)
        backward_layers = n_layers
        notes.append("LLM.int8 base: int8 weights + fp32 row scales; each linear keeps its input")
    else:
        decoder = base.total - base.embedding - base.lm_head - h  # less the final norm
        decoder -= tower_params(arch)  # freeze's top layers are the decoder's, not a tower's
        shape = method_shape(arch, config, decoder // max(n_layers, 1))
        own = shape.adapter == 0  # bias / freeze train the model's own weights
        params = ParamCounts(
            total=base.total + shape.adapter, embedding=base.embedding, lm_head=base.lm_head,
            linear=base.linear, other=base.other, trainable=shape.trainable,
            per_layer_linear=base.per_layer_linear, lora=shape.adapter,
        )  # fmt: skip
        if config.method == "freeze" and config.train_embeddings:
            params = replace(params, trainable=params.trainable + base.embedding + base.lm_head)
        trainable_bytes = weight_bytes if own else shape.trainable_bytes
        # the frozen rest: the model's own weights (fp32 masters for bias / freeze)
        frozen = (weight_bytes if own else b) * (params.total - params.trainable - params.lora)
        extra_positions, extra_keys = shape.extra_positions, shape.extra_keys
        act_config = with_positions(config, extra_positions)
        layer_method = "full" if config.method == "freeze" else config.method
        per_layer = (
            est.layer_activation_bytes(arch, replace(act_config, method=layer_method), b)
            + shape.per_token_layer
        )
        backward_layers = shape.backward_layers
        notes.extend(describe(shape, config))
    frozen += kept_fp32_states(base, config, b).frozen  # what the 16-bit model keeps in fp32
    per_layer *= calibration.activation_scale
    trainable_weights = params.trainable * trainable_bytes
    grads = params.trainable * trainable_bytes
    optim = params.trainable * est.optimizer_bytes_per_param(config.optim, trainable_bytes)
    temp = params.trainable * est.optimizer_temp_bytes_per_param(config.optim, trainable_bytes)

    seq = config.seq_len + extra_positions
    tokens = config.batch * seq
    # fp32 embeddings carry an fp32 residual stream (or the model keeps it in fp32)
    residual = 4 if mixed else residual_bytes(arch, b)
    carried = max(n_layers - 1, 0) * carried_state_bytes(arch, b) * tokens
    logits = est.logits_bytes_per_token(arch, b, calibration, loss_path) * tokens
    # autocast's 16-bit weight copies, kept for backward (input gradients) in layers that
    # run backward; the output head's too
    cast_layer = params.per_layer_linear * b if mixed else 0.0
    cast_head = (base.lm_head or base.embedding) * b if mixed else 0.0
    kv = arch.num_kv_heads * arch.head_dim
    prefix_cache = config.batch * extra_keys * n_layers * 2 * kv * b  # the trained keys/values
    prefix_layer = config.batch * extra_keys * 2 * kv * b  # each layer's longer keys/values
    dequant = int8_backward_bytes(arch, b) if int8 else 0.0
    # MatMul8bitLt keeps its tensors as ctx attributes, out of checkpointing's reach
    int8_kept = n_layers * int8_saved_bytes(arch, b) * tokens if int8 else 0.0
    if config.grad_ckpt:
        saved = n_layers * residual * h * tokens + carried + prefix_cache + cast_head + int8_kept
        at_loss = saved + logits
        working = per_layer * tokens + 4 * residual * h * tokens + cast_layer + prefix_layer
        at_recompute = saved - cast_head + working + dequant
    else:
        layer_bytes = per_layer * tokens + cast_layer + prefix_layer
        saved = backward_layers * layer_bytes + 2 * residual * h * tokens + prefix_cache
        saved += cast_head
        at_loss = saved + logits
        at_recompute = 0.0
    resident_grads = grads if config.grad_accum > 1 else 0.0
    # a trained output head's gradient lands first (under autocast: a 16-bit one, then fp32)
    early = (base.lm_head or base.embedding) * (trainable_bytes + (b if mixed else 0))
    early_grads = early if config.method == "freeze" and config.train_embeddings else 0.0
    fb_grads = max(resident_grads, early_grads)
    ddp_buckets = grads if config.num_gpus > 1 else 0.0
    resident = frozen + trainable_weights + optim
    phase_bytes = {
        "forward_backward": resident + fb_grads + ddp_buckets + at_loss,
        "recompute": resident + fb_grads + ddp_buckets + at_recompute if config.grad_ckpt else 0.0,
        "optimizer_step": resident + grads + ddp_buckets + temp,
    }
    peak_phase = max(phase_bytes, key=lambda k: phase_bytes[k])
    allocated = phase_bytes[peak_phase] * correction
    activations = {"forward_backward": saved, "recompute": at_recompute, "optimizer_step": 0.0}
    breakdown = {
        "weights": frozen,
        "trainable_weights": trainable_weights,
        "optimizer_states": optim,
        "gradients": (grads if peak_phase == "optimizer_step" else fb_grads) + ddp_buckets,
        "activations": activations[peak_phase],
        "logits_and_loss": logits if peak_phase == "forward_backward" else 0.0,
        "temporaries": temp if peak_phase == "optimizer_step" else 0.0,
    }
    if correction != 1.0:
        breakdown["temporaries"] += allocated - phase_bytes[peak_phase]
        notes.append(f"probe correction x{correction:.3f} applied")
    reserved, overhead = est.reserved_and_overhead(
        arch, config, calibration, allocated=allocated, logits=logits, tokens=tokens, b=b
    )
    breakdown["overhead"] = reserved - allocated + overhead
    host = host_memory(
        num_gpus=config.num_gpus, sharding="none", offload="none", optimizer_states=optim,
        master_weights=0.0, gradients_fp32=grads, weights=frozen + trainable_weights,
        gradients=grads,
    )  # fmt: skip
    return est.MemoryEstimate(
        allocated_bytes=int(allocated),
        reserved_bytes=int(reserved),
        device_bytes=int(reserved + overhead),
        breakdown={k: int(v) for k, v in breakdown.items()},
        peak_phase=peak_phase,
        phase_bytes={k: int(v) for k, v in phase_bytes.items()},
        host_bytes=0,
        params=params,
        notes=tuple(notes),
        host=host,
    )
