"""Token mixers beyond plain attention and the scans engine.plan.activations knows: what
their PyTorch code saves for backward, per token.

Inkling (inkling_text) attends with a learned relative-position bias: each token's r_proj
output mixes a bank of bias-vs-distance profiles (rel_logits, one row of `extent` distances
per head), gathered into a dense batch x heads x seq x seq bias that transformers folds with
the mask into one float SDPA mask needing a gradient. Sliding layers ("hybrid_sliding") have
their own head count and size (swa_*), full layers ("hybrid") the model's. Keys and values
pass through fp32 short convolutions, and so do the attention and MLP outputs.

Which kernel runs decides what is kept (torch's sdp_utils, transformers' sdpa_attention):
without a mask transformers asks for GQA, which the memory-efficient kernel lacks and flash
(no mask) cannot serve, so CUDA runs the math path (fp32 copies of q/k/v and fp32
probabilities); with a mask, or one key/value head per query head, k/v are repeated and the
memory-efficient kernel keeps its inputs, the bias and the output.

Pure Python, no torch.
"""

from __future__ import annotations

from typing import Any

from engine.models import ModelArch
from engine.training_config import TrainingConfig

REL_SLIDING = "rel_sliding"  # Inkling's sliding-window attention with a relative bias
REL_FULL = "rel_full"  # Inkling's full attention with a relative bias
REL_KINDS = frozenset({REL_SLIDING, REL_FULL})


def _int(cfg: dict[str, Any], key: str, default: int) -> int:
    value = cfg.get(key)
    return (
        int(value) if isinstance(value, int) and not isinstance(value, bool) and value else default
    )


def rel_mixer(cfg: dict[str, Any], name: str) -> str | None:
    """Inkling's layer types as mixers; None for other models (no relative-bias keys)."""
    if "d_rel" not in cfg or "rel_extent" not in cfg:
        return None
    return {"hybrid_sliding": REL_SLIDING, "hybrid": REL_FULL}.get(name)


def _shape(arch: ModelArch, sliding: bool) -> tuple[int, int, int, int]:
    """Query heads, key/value heads, head size and bias extent of a layer kind."""
    cfg = arch.text_config
    if sliding:
        heads = _int(cfg, "swa_num_attention_heads", arch.num_heads)
        return (
            heads,
            _int(cfg, "swa_num_key_value_heads", heads),
            _int(cfg, "swa_head_dim", arch.head_dim),
            _int(cfg, "sliding_window_size", 512),
        )
    return arch.num_heads, arch.num_kv_heads, arch.head_dim, _int(cfg, "rel_extent", 1024)


def _math_path(arch: ModelArch, config: TrainingConfig, sliding: bool) -> bool:
    """Whether SDPA runs the math path on CUDA: no mask (a sliding window longer than the
    sequence, or full attention) and grouped key/value heads, so transformers asks for GQA."""
    heads, kv_heads, _, extent = _shape(arch, sliding)
    masked = sliding and config.seq_len >= extent
    return not masked and heads > kv_heads


def _kernel_saved(arch: ModelArch, config: TrainingConfig, b: int, kind: str, eager: bool) -> float:
    """Per token, what the attention kernel itself keeps (freed once its backward ran)."""
    sliding = kind == REL_SLIDING
    heads, _, d, _ = _shape(arch, sliding)
    seq = config.seq_len
    if eager:  # q, repeated k/v; fp32 probabilities and their compute-dtype copy
        return 3 * b * heads * d + heads * seq * (4 + b)
    if _math_path(arch, config, sliding):  # fp32 q, repeated k and v, probabilities
        return 4 * 3 * heads * d + 4 * heads * seq
    # memory-efficient kernel: q, repeated k/v, output, and the float bias
    return 4 * b * heads * d + b * heads * seq


def rel_attention_bytes(
    arch: ModelArch, config: TrainingConfig, b: int, kind: str, eager: bool
) -> float:
    """Per token, one relative-bias attention layer (its short convolutions included)."""
    sliding = kind == REL_SLIDING
    heads, kv_heads, d, extent = _shape(arch, sliding)
    seq = config.seq_len
    h = arch.hidden_size
    qd, kvd = heads * d, kv_heads * d
    # fp32 short convolutions keep their fp32 inputs: k, v, the attention and MLP outputs
    total: float = 4 * (2 * kvd + 2 * h)
    total += 4 * (qd + kvd)  # q_norm / k_norm's fp32 inputs
    # the bias: rel_logits (kept by gather), its int64 index and two boolean masks (seq x seq)
    total += b * heads * extent + seq * (8 + 2)
    total += _kernel_saved(arch, config, b, kind, eager)
    if config.method == "full":
        # the projections' input, o_proj's input, the normalised q/k for the norms' weights
        total += b * h + b * qd + b * (qd + kvd)
    return total


def rel_attention_backward(
    arch: ModelArch, config: TrainingConfig, b: int, kind: str, eager: bool
) -> float:
    """Per token, the gradients the layer's backward holds at once, the larger of two
    moments: at the kernel, the bias's gradient and its copy through the mask (where), with
    the fp32 gradients of the probabilities and scores on the math and eager paths; at the
    gather, the zeros rel_logits' gradient is scattered into (heads x extent) beside the
    bias's gradient it reads."""
    sliding = kind == REL_SLIDING
    heads, _, _, extent = _shape(arch, sliding)
    seq = config.seq_len
    kernel: float = 2 * b * heads * seq
    if eager or _math_path(arch, config, sliding):
        kernel += 2 * 4 * heads * seq
    gather = b * heads * (2 * extent + seq) - _kernel_saved(arch, config, b, kind, eager)
    return max(kernel, gather)


def rel_attention_forward(
    arch: ModelArch, config: TrainingConfig, b: int, kind: str, eager: bool
) -> float:
    """Per token, what the layer's forward holds at the softmax beyond what it keeps: the bias
    before and after the mask is folded in (compute dtype), and on the math path the fp32
    scores, the mask's fp32 copy, and q/k/v's fp32 copies before scaling and repeating."""
    sliding = kind == REL_SLIDING
    heads, kv_heads, d, _ = _shape(arch, sliding)
    seq = config.seq_len
    total: float = b * heads * seq
    if eager or _math_path(arch, config, sliding):
        total += b * heads * seq + 2 * 4 * heads * seq + 4 * (heads + 2 * kv_heads) * d
    return total


# -- RecurrentGemma (Griffin): RG-LRU recurrent blocks between local-attention blocks ---------

RGLRU = "rglru"  # RecurrentGemma's recurrent block: conv1d, gates, token-by-token scan


def block_type_mixers(cfg: dict[str, Any], n: int, attention: str) -> list[str] | None:
    """RecurrentGemma's `block_types`, repeated over the layers (its layers_block_type):
    "recurrent" is an RG-LRU block, anything else local attention (`attention`)."""
    types = cfg.get("block_types")
    if "lru_width" not in cfg or not isinstance(types, list) or not types:
        return None
    return [RGLRU if types[i % len(types)] == "recurrent" else attention for i in range(n)]


def rglru_bytes(arch: ModelArch, config: TrainingConfig, b: int) -> float:
    """Per token, what RecurrentGemmaRecurrentBlock's PyTorch code keeps (lru_width W each):
    the conv's input and output, gelu's input and output (the y branch), the gates' sigmoid
    outputs, the two exps (the decay and its square), 1 - a², the reset-masked multiplier and
    its cast, the gated input, the scan's output; and per scan step, the fp32 copy of that
    step's decay and the fp32 running state the product keeps."""
    width = _int(arch.text_config, "lru_width", arch.hidden_size)
    total: float = 13 * b * width + 2 * 4 * width
    if config.method == "full":  # linear_x/linear_y's input, linear_out's input
        total += b * arch.hidden_size + b * width
    return total


def retained_graph_bytes(arch: ModelArch, config: TrainingConfig, b: int) -> tuple[float, int]:
    """Per token and layer, the autograd graph a module keeps alive after backward, and how
    many layers keep one: RG-LRU stores its last scan state (`self.recurrent_states`, with its
    grad_fn) on the module, so the x branch's saved tensors (the conv's input and output,
    gates, decays, multiplier, gated input, per-step fp32 decays and states) outlive the
    backward into the optimizer step, up to the layer's next forward. Under checkpointing it
    is the recompute's graph, kept by each layer once its backward ran."""
    layers = sum(1 for kind in _kinds(arch) if kind == RGLRU)
    if not layers:
        return 0.0, 0
    width = _int(arch.text_config, "lru_width", arch.hidden_size)
    return 10 * b * width + 2 * 4 * width, layers


def _kinds(arch: ModelArch) -> list[str]:
    from engine.plan.activations import layer_kinds  # the caller's module: import late

    return [kind.mixer for kind in layer_kinds(arch)]


# -- MiniMax's lightning attention (a blocked linear attention) --------------------------------

LIGHTNING = "lightning"  # MiniMax's linear_attention layers


def lightning_mixer(cfg: dict[str, Any], name: str) -> str | None:
    """MiniMax's "linear_attention" layer type (its config has the lightning block_size)."""
    if name == "linear_attention" and "block_size" in cfg and "linear_attn_alpha_factor" in cfg:
        return LIGHTNING
    return None


def lightning_bytes(arch: ModelArch, config: TrainingConfig, b: int) -> float:
    """Per token, MiniMaxLightningAttention's PyTorch loop over blocks of `block_size`: qkv's
    SiLU input and output (3 x heads x head_dim), per block the decayed q·kᵀ scores (heads x
    block x block, kept by the matmul with v), q and k scaled by their decays, the running
    k·v state (heads x head_dim², one per block); then the output reshaped, RMSNorm's fp32
    input and output, and the sigmoid gate."""
    hd = arch.num_heads * arch.head_dim
    block = min(_int(arch.text_config, "block_size", 256), config.seq_len)
    total: float = 2 * 3 * b * hd + b * arch.num_heads * block + 2 * b * hd
    total += b * hd * arch.head_dim / block
    total += b * hd + 4 * hd + 2 * b * hd  # reshaped output, the norm's input, gate, norm out
    if config.method == "full":  # qkv_proj/output_gate's input, out_proj's input
        total += b * arch.hidden_size + b * hd
    return total


# -- ZAYA's compressed convolutional attention (CCA) -------------------------------------------

CCA = "cca"  # ZAYA's "hybrid" layers: CCA projections, then full attention
CCA_SLIDING = "cca_sliding"  # its "hybrid_sliding" layers: the same, sliding-window attention
CCA_KINDS = frozenset({CCA, CCA_SLIDING})


def cca_mixer(cfg: dict[str, Any], name: str) -> str | None:
    """ZAYA's layer types (its config has the CCA convolutions' cca_time0/cca_time1): every
    layer is attention behind CCA projections, none a state-space scan."""
    if "cca_time0" not in cfg or "cca_time1" not in cfg:
        return None
    return {"hybrid": CCA, "hybrid_sliding": CCA_SLIDING}.get(name)


def cca_bytes(arch: ModelArch, config: TrainingConfig, b: int) -> float:
    """Per token, what ZayaCCAProjection and ZayaQKNorm keep beyond plain attention's q, k, v
    and output (q and k both qd + kvd wide together): the causal 1D convolutions over the
    concatenated q/k projections keep their inputs (the padded concatenation and the
    depthwise convolution's output), the L2 norms keep q and k before normalising (and a norm
    per head). With trainable weights, the norm's key scale keeps the normalised k, and the
    layer's two ZayaResidualScaling (after attention, after the MLP) keep what their scales
    multiply: the fp32 residual plus its bias and the branch's output plus its bias."""
    heads, kv_heads, d = arch.num_heads, arch.num_kv_heads, arch.head_dim
    qk = (heads + kv_heads) * d
    total: float = 2 * b * qk + b * qk + 2 * b * (heads + kv_heads)
    if config.method == "full":
        total += b * kv_heads * d + 2 * (4 + b) * arch.hidden_size
    return total


def zaya_router_bytes(arch: ModelArch, config: TrainingConfig, b: int) -> float:
    """Per token, ZayaRouter's MLP over router_hidden_size R: its RMSNorm's fp32 input, the
    two GELUs' inputs, the softmax over the experts plus the skip expert. With trainable
    weights also the carried router state (kept by its scale), the norm's output and the
    linear layers' inputs."""
    r = _int(arch.text_config, "router_hidden_size", arch.hidden_size)
    total: float = 4 * r + 2 * b * r + b * (arch.num_experts + 1)
    if config.method == "full":
        total += 4 * b * r
    return total
