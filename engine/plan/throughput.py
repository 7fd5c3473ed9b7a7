"""How long a training step takes: a physics model of one optimizer step, per GPU.

The step is summed from what it does (docs/estimator.md, "The speed model"):
- tensor-core work: the matmul FLOPs of every pass (forward; backward for activation
  gradients on every layer, for weight gradients only where weights train; the recompute of
  gradient checkpointing), attention with the causal mask, the lm_head, LoRA's own small
  matmuls; MoE counts the experts a token visits. Small micro-batches do not fill the GPU:
  the matmul rate ramps up with tokens per micro-batch towards a saturation point;
- memory-bound work over the GPU's bandwidth: elementwise kernels on activations (norms,
  residuals, activation functions, LoRA's dropout/scale/add), the logits and loss, QLoRA's
  dequantisation of the 4-bit weights in every pass, DoRA's weight norm, the optimizer step
  over parameters, gradients and states;
- communication: DDP's gradient all-reduce, ZeRO/FSDP all-gathers and reduce-scatters over
  the GPU's interconnect (NVLink or PCIe; InfiniBand between nodes), offload over PCIe;
- a fixed overhead per optimizer step.

Four constants are fitted on measured runs (benchmarks/fit_throughput.py); everything else is
counted from the architecture, the setup and the GPU's datasheet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from engine.models import ModelArch
from engine.plan.estimator import count_params, decoder_linears, lora_targets
from engine.plan.stages import extra_forward_passes
from engine.training_config import TrainingConfig
from profiles import GpuProfile


@dataclass(frozen=True)
class ThroughputCalibration:
    """The speed model's fitted constants (values from benchmarks/fit_throughput.py)."""

    # Share of the datasheet's dense tensor FLOP/s that large training matmuls reach.
    matmul_efficiency: float = 0.6853
    # Tokens per micro-batch at which the matmul rate is half that share: below it the GPU
    # waits on kernel launches and small matmuls (the overhead-bound regime).
    saturation_tokens: float = 631.9
    # Share of the datasheet's memory bandwidth that the counted elementwise, dequantisation
    # and optimizer traffic reaches (near 1: some of the counted kernels fuse in practice).
    memory_efficiency: float = 0.9869
    # Share of the interconnect's one-way bandwidth that NCCL collectives reach, counted as
    # not hidden behind compute.
    link_efficiency: float = 0.6820


DEFAULT_THROUGHPUT_CALIBRATION = ThroughputCalibration()

# Fixed per optimizer step: zero_grad, the scheduler, logging, the next batch (not fitted:
# the measured steps are seconds long and cannot see it; a profile of HF Trainer's loop).
STEP_OVERHEAD_S = 0.010
# Elementwise traffic of one decoder layer, per token and pass, in units of the activation
# dtype: two norms, two residual adds, rotary on q/k (per width h) and the gated activation
# (per MLP width f). Counted from the kernels transformers runs, not fitted.
ELEMENTWISE_PER_H = 24
ELEMENTWISE_PER_QK = 6
ELEMENTWISE_PER_F = 10
# LoRA per adapted module and pass: dropout copy of the input, the B output, scale and add.
LORA_ELEMENTWISE_PER_IN = 4
LORA_ELEMENTWISE_PER_OUT = 8
# Bytes per logit (token x vocab entry) through the loss: the 16-bit logits, the fp32 upcast,
# log-softmax and its gradient, the cast back.
LOGIT_BYTES = 32
# QLoRA: each pass reads the 4-bit weights and writes (then reads) their 16-bit copy.
DEQUANT_BYTES_PER_PARAM = 4.5
# torch's foreach AdamW touches each element ~20 times (lerp, mul, addcmul, sqrt, div, add,
# addcdiv, weight decay); gradient clipping reads and rescales the gradients (3 touches).
ADAMW_TOUCHES = 20
CLIP_TOUCHES = 3
# bitsandbytes' fused 8-bit AdamW: read/write the 16/32-bit parameter, read the gradient,
# read/write two 1-byte states.
ADAMW_8BIT_BYTES_EXTRA = 4
# Between nodes (more than 8 GPUs): one 400 Gb/s InfiniBand NIC per GPU.
INTER_NODE_GBS = 50.0
GPUS_PER_NODE = 8
# DeepSpeed's CPU Adam, parameters per second on a server CPU (optimizer offload).
CPU_ADAM_PARAMS_PER_S = 1.0e9


@dataclass(frozen=True)
class StepTime:
    """One optimizer step on one GPU, by term (seconds), and the job's tokens/s."""

    compute_s: float
    memory_s: float
    comm_s: float
    optimizer_s: float
    overhead_s: float
    tokens_per_step: float  # all GPUs

    @property
    def step_s(self) -> float:
        return self.compute_s + self.memory_s + self.comm_s + self.optimizer_s + self.overhead_s

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.step_s if self.step_s > 0 else 0.0

    def to_dict(self) -> dict[str, float]:
        return {
            "compute_s": round(self.compute_s, 4),
            "memory_s": round(self.memory_s, 4),
            "comm_s": round(self.comm_s, 4),
            "optimizer_s": round(self.optimizer_s, 4),
            "overhead_s": round(self.overhead_s, 4),
            "step_s": round(self.step_s, 4),
        }


def link_gbs(gpu: GpuProfile, num_gpus: int) -> float:
    """One-way bandwidth a GPU's collectives run over: NVLink, else PCIe; InfiniBand beyond
    one node."""
    return INTER_NODE_GBS if num_gpus > GPUS_PER_NODE else gpu.interconnect_gbs


@dataclass(frozen=True)
class _Shape:
    """What the step time needs from the architecture and the setup, counted once."""

    layers: int
    matmul_params: float  # decoder linears a token passes through (MoE: active) + lm_head
    lm_head_params: float
    stored_linear_params: float  # every decoder linear (QLoRA dequantises all of them)
    attn_width: int  # heads x head_dim
    elementwise_per_token: float  # elements touched per token per layer per pass
    lora_params: float
    lora_elementwise_per_token: float  # per layer per pass
    dora_weight_params: float  # weights of DoRA-adapted modules (norm every forward)
    vocab: int
    total_params: float
    trainable_params: float


def _shape(arch: ModelArch, config: TrainingConfig) -> _Shape:
    # ModelArch hashes without its config: key the cache on the numbers that matter.
    dims = (
        arch.model_type,
        arch.hidden_size,
        arch.num_layers,
        arch.num_heads,
        arch.num_kv_heads,
        arch.head_dim,
        arch.intermediate_size,
        arch.vocab_size,
        arch.tied_embeddings,
        arch.num_experts,
        arch.experts_per_token,
        arch.moe_intermediate_size,
    )
    return _shape_cached(arch, dims, config.method, config.rank, config.targets, config.dora)


@lru_cache(maxsize=1024)
def _shape_cached(
    arch: ModelArch,
    dims: tuple[object, ...],
    method: str,
    rank: int,
    targets: tuple[str, ...],
    dora: bool,
) -> _Shape:
    config = TrainingConfig(method=method, rank=rank, targets=targets, dora=dora)
    params = count_params(arch, config)
    h, layers = arch.hidden_size, arch.num_layers
    linears = decoder_linears(arch)
    active = 0.0
    for lin in linears:
        count = lin.count
        if arch.is_moe and lin.count > 1:
            count = arch.experts_per_token
        active += lin.in_features * lin.out_features * count
    ffn = (
        arch.moe_intermediate_size * arch.experts_per_token
        if arch.is_moe
        else arch.intermediate_size
    )
    qk = arch.num_heads * arch.head_dim + arch.num_kv_heads * arch.head_dim
    elementwise = ELEMENTWISE_PER_H * h + ELEMENTWISE_PER_QK * qk + ELEMENTWISE_PER_F * ffn
    if arch.is_moe:  # tokens gathered to and scattered from their experts
        elementwise += 4 * h * arch.experts_per_token
    lora_elem = 0.0
    dora_params = 0.0
    if config.is_peft:
        for lin in lora_targets(arch, config):
            count = arch.experts_per_token if arch.is_moe and lin.count > 1 else lin.count
            lora_elem += count * (
                LORA_ELEMENTWISE_PER_IN * lin.in_features
                + LORA_ELEMENTWISE_PER_OUT * lin.out_features
            )
            if config.dora:
                dora_params += lin.in_features * lin.out_features * lin.count
    lm_head = float(arch.vocab_size * h)
    return _Shape(
        layers=layers,
        matmul_params=active * layers + lm_head,
        lm_head_params=lm_head,
        stored_linear_params=float(params.linear),
        attn_width=arch.num_heads * arch.head_dim,
        elementwise_per_token=elementwise,
        lora_params=float(params.lora),
        lora_elementwise_per_token=lora_elem,
        dora_weight_params=dora_params * layers,
        vocab=arch.vocab_size,
        total_params=float(params.total),
        trainable_params=float(params.trainable),
    )


def _tensor_tflops(gpu: GpuProfile, dtype: str) -> float:
    if dtype == "fp32":  # no tensor-core bf16: TF32 at best, about half
        return gpu.bf16_tflops / 2
    return gpu.fp16_tflops if dtype == "fp16" else gpu.bf16_tflops


def step_time(
    arch: ModelArch,
    config: TrainingConfig,
    gpu: GpuProfile,
    calibration: ThroughputCalibration = DEFAULT_THROUGHPUT_CALIBRATION,
) -> StepTime:
    """Seconds per optimizer step on each GPU of `config.num_gpus` (all run in lockstep)."""
    c = calibration
    s = _shape(arch, config)
    n = config.num_gpus
    # Preference pairs: chosen and rejected both go through the model.
    tokens = float(config.tokens_per_micro_batch * config.sequences_per_sample)
    micro_batches = config.grad_accum
    extra = extra_forward_passes(config)  # the reference's forward (and KTO's KL completions)
    full = config.method == "full"
    act_bytes = 4 if config.dtype == "fp32" or config.kbit_upcast else 2

    # -- tensor-core FLOPs per micro-batch ------------------------------------------------
    decoder = s.matmul_params - s.lm_head_params
    attn = 2.0 * s.layers * config.seq_len * s.attn_width  # forward, per token, causal half
    forward = 2 * s.matmul_params + attn + 2 * s.lora_params
    backward = 2 * s.matmul_params + 2 * attn + 4 * s.lora_params  # activation gradients
    if full:
        backward += 2 * s.matmul_params  # weight gradients
    recompute = (2 * decoder + attn + 2 * s.lora_params) if config.grad_ckpt else 0.0
    flops = tokens * (forward + backward + recompute + extra * (forward - 2 * s.lora_params))
    saturation = tokens / (tokens + c.saturation_tokens)
    efficiency = c.matmul_efficiency
    rate = _tensor_tflops(gpu, config.dtype) * 1e12 * efficiency * saturation
    compute = flops / rate

    # -- memory-bound work per micro-batch --------------------------------------------------
    bandwidth = gpu.memory_bandwidth_gbs * 1e9 * c.memory_efficiency
    # forward, backward (about 1.5x the forward's traffic), recompute
    passes = 2.5 + (1.0 if config.grad_ckpt else 0.0) + extra
    per_token = s.layers * (
        s.elementwise_per_token * act_bytes * passes
        + s.lora_elementwise_per_token * act_bytes * passes
    )
    traffic = tokens * (per_token + s.vocab * LOGIT_BYTES)
    weight_passes = 2.0 + (1.0 if config.grad_ckpt else 0.0) + extra
    if config.method == "qlora":
        traffic += s.stored_linear_params * DEQUANT_BYTES_PER_PARAM * weight_passes
    if s.dora_weight_params:  # W + BA and its column norm, every forward
        traffic += s.dora_weight_params * 3 * 2 * (weight_passes - 1)
    if config.attn == "eager":  # the score matrix goes through memory
        traffic += 4 * 2 * config.batch * arch.num_heads * config.seq_len**2 * s.layers
    memory = traffic / bandwidth

    # -- optimizer step --------------------------------------------------------------------
    shard = n if config.sharding in ("zero1", "zero2", "zero3", "fsdp") and n > 1 else 1
    trainable = s.trainable_params / shard
    state_bytes = 2 if config.pure_bf16 or not full else 4
    if not full:
        state_bytes = 4  # adapters train in fp32
    optimizer = 0.0
    if config.offload == "optimizer" or config.offload == "params":
        pcie = gpu.pcie_gbs * 1e9
        optimizer = trainable / CPU_ADAM_PARAMS_PER_S + 2 * trainable * state_bytes / pcie
    else:
        if "8bit" in config.optim:
            per_param = 3 * state_bytes + ADAMW_8BIT_BYTES_EXTRA
        elif config.optim == "sgd":
            per_param = 3 * state_bytes
        else:
            per_param = ADAMW_TOUCHES * state_bytes
        per_param += CLIP_TOUCHES * state_bytes
        optimizer = trainable * per_param / bandwidth

    # -- communication -----------------------------------------------------------------------
    comm = 0.0
    if n > 1:
        link = link_gbs(gpu, n) * 1e9 * c.link_efficiency
        ring = (n - 1) / n
        weight_bytes = s.total_params * (0.55 if config.method == "qlora" else 2.0)
        grad_bytes = s.trainable_params * (2.0 if config.pure_bf16 or config.is_peft else 4.0)
        if config.sharding in ("zero3", "fsdp"):
            per_micro = 2 * weight_bytes * ring + grad_bytes * ring  # gather x2, reduce-scatter
            comm = micro_batches * per_micro / link
        elif config.sharding == "zero2":
            comm = (micro_batches * grad_bytes * ring + weight_bytes * ring) / link
        else:  # DDP / ZeRO-1: one all-reduce of the gradients per step
            comm = 2 * grad_bytes * ring / link
        if config.offload == "params":
            comm += micro_batches * 2 * weight_bytes / (gpu.pcie_gbs * 1e9)

    return StepTime(
        compute_s=micro_batches * compute,
        memory_s=micro_batches * memory,
        comm_s=comm,
        optimizer_s=optimizer,
        overhead_s=STEP_OVERHEAD_S,
        tokens_per_step=tokens * micro_batches * n,
    )


def tokens_per_s(
    arch: ModelArch,
    config: TrainingConfig,
    gpu: GpuProfile,
    calibration: ThroughputCalibration = DEFAULT_THROUGHPUT_CALIBRATION,
) -> float:
    """Trained tokens per second of the whole job (every GPU together)."""
    return step_time(arch, config, gpu, calibration).tokens_per_s


@dataclass(frozen=True)
class Band:
    """Where the truth likely lies around a point estimate: measured/predicted ratios at the
    10th and 90th percentile of the fit's residuals on the reference runs."""

    low: float
    high: float

    def around(self, value: float) -> tuple[float, float]:
        return value * self.low, value * self.high


# From benchmarks/fit_throughput.py on the comparable reference rows (measured / predicted).
SPEED_BAND = Band(low=0.85, high=1.26)


def log_error(predicted: float, measured: float) -> float:
    return math.log(predicted / measured)
