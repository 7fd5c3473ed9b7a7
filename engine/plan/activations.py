"""What each decoder layer saves for backward, per token, by the kind of layer it is.

A decoder stack is not one layer repeated: sliding-window and full-attention layers
interleave, DeepSeek's multi-head latent attention (MLA) projects through a compressed KV,
MoE layers interleave with dense ones (first_k_dense_replace, moe_layer_freq, mlp_only_layers,
decoder_sparse_step, interleave_moe_layer_step, expert_layer_period), and hybrids mix
attention with Mamba-2 / Mamba blocks (Falcon-H1, Bamba, Jamba, Nemotron-H, Zamba-2, Granite
4) or gated delta-net linear attention (Qwen3-Next). Each layer's kind is read from the
config; each kind's bytes follow the tensors transformers' PyTorch code keeps for backward:
the same code a training run executes when the optional fused kernels (mamba-ssm,
causal-conv1d, flash-linear-attention) are not installed, and the code the dry run follows.

Pure Python, no torch: the planner calls this for every candidate setup.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.models import ModelArch
from engine.plan.dsv4 import csa_indexer_bytes, lora_inputs_after_attention
from engine.plan.kda import KDA, kda_backward, kda_bytes, kda_mixer
from engine.plan.mixers import (
    CCA_KINDS,
    CCA_SLIDING,
    LIGHTNING,
    REL_KINDS,
    RGLRU,
    block_type_mixers,
    cca_bytes,
    cca_mixer,
    lightning_bytes,
    lightning_mixer,
    rel_attention_backward,
    rel_attention_bytes,
    rel_attention_forward,
    rel_mixer,
    rglru_bytes,
    zaya_router_bytes,
)
from engine.plan.params import attached_roles
from engine.plan.ssm import GDN_CHUNK as _GDN_CHUNK
from engine.plan.ssm import config_int as _int
from engine.plan.ssm import deltanet_bytes as _deltanet
from engine.plan.ssm import mamba1_backward as _mamba1_backward
from engine.plan.ssm import mamba1_bytes as _mamba1
from engine.plan.ssm import mamba2_bytes as _mamba2
from engine.plan.ssm import mamba2_scan_backward as _mamba2_scan_backward
from engine.plan.ssm import padded as _padded
from engine.plan.zamba1 import (
    MAMBA1_HEADS,
    SHARED_MAMBA1,
    ZAMBA1_KINDS,
    mamba1_heads_backward,
    mamba1_heads_bytes,
    per_head_mamba1,
    shared_block_bytes,
)
from engine.training_config import TrainingConfig

# Layer mixers
ATTENTION = "attention"  # full causal attention
SLIDING = "sliding"  # sliding-window or chunked attention (Gemma 2/3, gpt-oss, Llama 4)
MLA = "mla"  # multi-head latent attention (DeepSeek-V2/V3, GLM-4.7-Flash, Kimi)
MAMBA2 = "mamba2"  # Mamba-2's chunked scan (Falcon-H1, Bamba, Nemotron-H, Zamba-2, Granite 4)
MAMBA = "mamba"  # Mamba-1's selective scan (Jamba, FalconMamba)
DELTANET = "gated_deltanet"  # gated delta-net linear attention (Qwen3-Next)
HYBRID = "hybrid"  # attention and Mamba-2 side by side in one layer (Falcon-H1)
SPARSE_MLA = "sparse_mla"  # MLA behind a lightning indexer (DeepSeek-V3.2, GLM-5 DSA)
# MLPs
DENSE, MOE, NO_MLP = "dense", "moe", "none"

# Mixers with a causal attention (one mask per kind)
_ATTENDING = frozenset({ATTENTION, SLIDING, MLA, SPARSE_MLA, HYBRID, SHARED_MAMBA1, *CCA_KINDS})
# Modules a layer runs after its scan (the MLP, the mixer's output projection)
_AFTER_SCAN = frozenset(
    {"gate_proj", "up_proj", "down_proj", "gate_up_proj", "fc1", "fc2", "out_proj", "o_proj"}
)


# eager attention whose softmax runs in the compute dtype (softmax(..., dtype=the scores'
# dtype), after subtracting the row max): one probability tensor, not an fp32 one and its copy
COMPUTE_DTYPE_SOFTMAX = frozenset({"mimo_v2_flash", "hy_v4", "hy_v4_vl"})

# MoE layers whose transformers code runs every expert on every token, the router's scores
# zeroing the unchosen (Llama4TextExperts: one bmm over all experts)
EVERY_EXPERT = frozenset({"llama4", "llama4_text"})


@dataclass(frozen=True)
class LayerKind:
    mixer: str
    mlp: str


def _cfg(arch: ModelArch) -> dict[str, Any]:
    return arch.text_config


def _mamba2_like(cfg: dict[str, Any]) -> bool:
    return any(
        key in cfg for key in ("mamba_n_heads", "mamba_num_heads", "n_mamba_heads", "mamba_headdim")
    ) or ("ssm_state_size" in cfg and "chunk_size" in cfg)


def _mixer_of(cfg: dict[str, Any], name: str) -> str:
    """A layer-type string as configs spell it, as one of the mixers above."""
    name = str(name).lower()
    # Inkling's relative-bias attention, MiniMax's lightning attention (engine.plan.mixers)
    # ZAYA's CCA attention
    other = rel_mixer(cfg, name) or lightning_mixer(cfg, name) or kda_mixer(cfg, name)
    other = other or cca_mixer(cfg, name)
    if other:
        return other
    if name in ("sliding_attention", "chunked_attention", "local", "sliding"):
        return SLIDING
    if name in ("linear_attention", "mamba", "mamba2", "m", "ssm"):
        if per_head_mamba1(cfg):  # Zamba-1 (engine.plan.zamba1)
            return MAMBA1_HEADS
        if "linear_key_head_dim" in cfg:
            return DELTANET
        return MAMBA2 if _mamba2_like(cfg) else MAMBA
    if name == "hybrid":  # Zamba-2: a Mamba-2 block plus the shared attention block
        return SHARED_MAMBA1 if per_head_mamba1(cfg) else HYBRID
    if cfg.get("kv_lora_rank"):
        return SPARSE_MLA if cfg.get("index_n_heads") else MLA
    return ATTENTION


def _mixers(cfg: dict[str, Any], n: int) -> list[str]:
    model_type = str(cfg.get("model_type", ""))
    types = cfg.get("layer_types") or cfg.get("layers_block_type")
    if isinstance(types, list) and types:
        kinds = [_mixer_of(cfg, t) for t in types[:n]]
        kinds += [kinds[-1]] * (n - len(kinds))
        # Nemotron-H's "moe"/"mlp" entries are whole layers without a mixer
        return kinds
    if model_type.startswith("falcon_h1"):
        return [HYBRID] * n
    blocks = block_type_mixers(cfg, n, SLIDING)  # RecurrentGemma: RG-LRU and local attention
    if blocks:
        return blocks
    if "kv_lora_rank" in cfg and cfg.get("kv_lora_rank"):
        return [SPARSE_MLA if cfg.get("index_n_heads") else MLA] * n
    if "attn_layer_indices" in cfg and _mamba2_like(cfg):  # Bamba: Mamba-2 but the indices
        indices = cfg.get("attn_layer_indices") or ()
        return [ATTENTION if i in indices else MAMBA2 for i in range(n)]
    period = _int(cfg, "attn_layer_period")
    if period:  # Jamba
        offset = _int(cfg, "attn_layer_offset")
        return [ATTENTION if i % period == offset else MAMBA for i in range(n)]
    window = cfg.get("sliding_window")
    if isinstance(window, int) and window and cfg.get("use_sliding_window", True):
        return [SLIDING] * n
    return [ATTENTION] * n


def _mlps(cfg: dict[str, Any], arch: ModelArch, n: int) -> list[str]:
    types = cfg.get("layers_block_type")
    if isinstance(types, list) and any(t in ("moe", "mlp") for t in types):
        out = []
        for t in types[:n]:
            out.append(MOE if t == "moe" else DENSE if t == "mlp" else NO_MLP)
        return out
    if isinstance(types, list) and "hybrid" in types:  # Zamba: the shared block's MLP only
        return [DENSE if t == "hybrid" else NO_MLP for t in types[:n]] + [NO_MLP] * (n - len(types))
    if not arch.is_moe:
        return [DENSE] * n
    moe = [True] * n
    first_dense = _int(cfg, "first_k_dense_replace")
    freq = _int(cfg, "moe_layer_freq", default=1)
    sparse_step = _int(cfg, "decoder_sparse_step", default=1)
    interleave = _int(cfg, "interleave_moe_layer_step", default=1)
    only_dense = set(cfg.get("mlp_only_layers") or ())
    moe_layers = cfg.get("moe_layers")
    period = _int(cfg, "expert_layer_period")
    offset = _int(cfg, "expert_layer_offset")
    for i in range(n):
        if i < first_dense or i % freq or (i + 1) % sparse_step or i in only_dense:
            moe[i] = False
        if isinstance(moe_layers, list):
            moe[i] = i in moe_layers
        elif interleave > 1:
            moe[i] = (i + 1) % interleave == 0
        if period:
            moe[i] = i % period == offset
    return [MOE if m else DENSE for m in moe]


_KINDS: dict[int, tuple[ModelArch, tuple[LayerKind, ...]]] = {}


def layer_kinds(arch: ModelArch) -> tuple[LayerKind, ...]:
    """The kind of each decoder layer of `arch`, from its config (cached per arch)."""
    entry = _KINDS.get(id(arch))
    if entry is not None and entry[0] is arch:
        return entry[1]
    cfg = _cfg(arch)
    n = max(arch.num_layers, 1)
    mixers = _mixers(cfg, n)
    mlps = _mlps(cfg, arch, n)
    types = cfg.get("layers_block_type")
    if isinstance(types, list) and any(t in ("moe", "mlp") for t in types):
        # Nemotron-H: a layer is a mixer or an MLP, never both
        mixers = [m if mlp == NO_MLP else "none" for m, mlp in zip(mixers, mlps, strict=False)]
    # Zamba-1's Mamba layers are a norm and the Mamba block
    mlps = [NO_MLP if m == MAMBA1_HEADS else p for m, p in zip(mixers, mlps, strict=False)]
    kinds = tuple(LayerKind(m, p) for m, p in zip(mixers, mlps, strict=False))
    if len(_KINDS) > 256:
        _KINDS.clear()
    _KINDS[id(arch)] = (arch, kinds)
    return kinds


# -- bytes per token, per kind -----------------------------------------------------------------


def runs_eager(arch: ModelArch, config: TrainingConfig) -> bool:
    """Whether attention runs transformers' eager code: asked for, or no fused kernel for it."""
    roles = attached_roles(arch)
    return config.attn == "eager" or (
        roles is not None and config.attn not in roles.attention_kernels
    )


def attention_scores_bytes(arch: ModelArch, config: TrainingConfig, b: int, keys: int) -> float:
    """Per token per layer: eager attention keeps the softmax probabilities (fp32 and a
    compute-dtype copy) for every key it sees, and with logit softcapping (Gemma 2) the tanh's
    output too; sdpa/flash keep only a log-sum-exp per head."""
    if runs_eager(arch, config):
        softcap = b if _cfg(arch).get("attn_logit_softcapping") else 0
        probabilities = b if arch.model_type in COMPUTE_DTYPE_SOFTMAX else 4 + b
        return arch.num_heads * keys * (probabilities + softcap)
    return arch.num_heads * 4


def _window_masked(arch: ModelArch, config: TrainingConfig) -> bool:
    """Whether SDPA gets a materialised mask: transformers lets it use `is_causal` and builds
    none unless a sliding window is no longer than the sequence (masking_utils'
    _ignore_causal_mask_sdpa); FlashAttention never takes one."""
    window = _cfg(arch).get("sliding_window")
    if config.attn != "sdpa" or not isinstance(window, int) or isinstance(window, bool):
        return False
    sliding = {SLIDING, CCA_SLIDING} & {k.mixer for k in layer_kinds(arch)}
    return 0 < window <= config.seq_len and bool(sliding)


def mask_bytes(arch: ModelArch, config: TrainingConfig, b: int) -> float:
    """Per token: the attention masks transformers materialises once per forward and keeps
    until the backward ends, batch x seq x seq each, one per kind of attention layer. Eager
    attention always gets an additive mask in the hidden states' dtype; SDPA a boolean one
    only for sliding windows within the sequence."""
    mixers = {k.mixer for k in layer_kinds(arch)}
    kinds = len(mixers & _ATTENDING)
    if not kinds:
        return 0.0
    if runs_eager(arch, config):
        mixed = config.method == "full" and config.dtype != "fp32" and not config.pure_bf16
        return kinds * config.seq_len * (4 if mixed else b)
    return config.seq_len if _window_masked(arch, config) else 0.0


def _attention(arch: ModelArch, config: TrainingConfig, b: int, kind: str = ATTENTION) -> float:
    h = arch.hidden_size
    qd = arch.num_heads * arch.head_dim
    kvd = arch.num_kv_heads * arch.head_dim
    # q (post-RoPE), k (post-RoPE), v and the attention output, which sdpa/flash save.
    total = b * (2 * qd + 2 * kvd) + attention_scores_bytes(arch, config, b, config.seq_len)
    if _window_masked(arch, config) and kind == SLIDING:
        # the memory-efficient kernel saves the boolean mask turned into an additive bias of
        # the query's dtype (torch's convert_boolean_attn_mask), one per layer
        total += b * config.seq_len
    if config.method == "full":
        total += b * h + b * qd  # inputs of q/k/v (the norm output) and of o_proj
    return total


def _mla(arch: ModelArch, config: TrainingConfig, b: int) -> float:
    """DeepSeek's MLA: q through a rank-q_lora_rank bottleneck, k/v from a compressed
    kv_lora_rank latent plus a shared rotary key, each bottleneck RMSNorm-ed."""
    cfg = _cfg(arch)
    heads = arch.num_heads
    rope = _int(cfg, "qk_rope_head_dim")
    nope = _int(cfg, "qk_nope_head_dim", default=arch.head_dim)
    v_dim = _int(cfg, "v_head_dim", default=arch.head_dim)
    kv_rank = _int(cfg, "kv_lora_rank")
    q_rank = _int(cfg, "q_lora_rank")
    qk = heads * (nope + rope)
    total: float = b * (2 * qk + 2 * heads * v_dim)  # q, k (after RoPE and concat), v, output
    total += b * heads * (nope + v_dim)  # kv_b_proj's output, split into k_nope and v
    total += b * (kv_rank + rope) + 4 * kv_rank  # kv_a output, its norm's fp32 input
    if q_rank:
        total += b * q_rank + 4 * q_rank  # q_a output, its norm's fp32 input
    total += 2 * b * heads * rope  # the rotary halves before and after RoPE
    total += attention_scores_bytes(arch, config, b, config.seq_len)
    if config.method == "full":
        total += b * (arch.hidden_size + kv_rank + q_rank + heads * v_dim)
    return total


def hyper_streams(arch: ModelArch) -> int:
    """How many hidden vectors wide the residual stream is: hyper-connections (DeepSeek-V4,
    HY-V4) carry hc_mult streams between layers; 1 for a plain residual."""
    return max(_int(_cfg(arch), "hc_mult", default=1), 1)


def _hyper_connections(arch: ModelArch, b: int) -> float:
    """What a layer's two hyper-connections (before attention, before the MLP) save: each
    mixes its streams in fp32 (the flattened fp32 copy, kept by the RMS scale and by the
    mixing Linear), keeps the streams it sums with the `pre` weights (compute dtype), and its
    merge back keeps the fp32 copy of the branch output it spreads over the streams."""
    streams = hyper_streams(arch)
    if streams <= 1:
        return 0.0
    h = arch.hidden_size
    return 2 * (4 * streams * h + 4 * h + b * streams * h)


# models whose MLP activation is an nn.ReLU written into the code, not named in the config
RELU_MLP_TYPES = frozenset({"ctrl"})


def relu_mlp(arch: ModelArch) -> bool:
    """Whether the MLP's activation is ReLU, which keeps its output (not its input) for
    backward: the same tensor the product or down_proj keeps, so it is saved once."""
    cfg = _cfg(arch)
    act = cfg.get("hidden_act") or cfg.get("activation_function") or cfg.get("hidden_activation")
    return act == "relu" or arch.model_type in RELU_MLP_TYPES


def gated_kept(arch: ModelArch) -> int:
    """How many intermediate-sized tensors a gated MLP's activation keeps for backward. Plain
    SwiGLU: the gate (the activation's input), the activation and up. Clamped SwiGLU (a
    `swiglu_limit`: gate.clamp(max), up.clamp(±limit), GPT-OSS, MiniMax-M3, DeepSeek-V4): the
    clamps keep their inputs (gate and up, or the fused gate_up they are views of), silu(gate)
    * up its clamped gate, activation and clamped up: five. With a `swiglu_alpha` (GPT-OSS's
    form, gate·σ(α·gate) then (up + 1)·glu): the clamped gate, the sigmoid, glu and up + 1
    beside gate and up: six. A ReLU keeps its output, the product's input anyway: two."""
    cfg = _cfg(arch)
    if relu_mlp(arch):
        return 2
    limit = cfg.get("swiglu_limit")
    if not isinstance(limit, (int, float)) or isinstance(limit, bool) or not limit:
        return 3
    return 6 if cfg.get("swiglu_alpha") else 5


def _mlp(arch: ModelArch, config: TrainingConfig, b: int, f: int) -> float:
    """A (gated) MLP's saved tensors: what its activation keeps (gated_kept); down_proj's input
    when it is trainable. A ReLU keeps its output, which is the product's (or, ungated,
    down_proj's) input anyway: one tensor fewer."""
    full = config.method == "full"
    relu = relu_mlp(arch)
    if arch.gated_mlp:
        return gated_kept(arch) * b * f + (b * f if full else 0)
    return b * f + (b * f if full and not relu else 0)


def _shared_expert_size(arch: ModelArch) -> int:
    cfg = _cfg(arch)
    size = _int(cfg, "shared_expert_intermediate_size", "shared_intermediate_size")
    if size:
        return size
    shared = _int(cfg, "n_shared_experts", "num_shared_experts", "moe_num_shared_experts")
    return shared * arch.moe_intermediate_size


def layer_bytes(arch: ModelArch, config: TrainingConfig, b: int, kind: LayerKind) -> float:
    """Bytes saved for backward per token by one layer of `kind` (no checkpointing), LoRA's
    own saved inputs excluded (engine.plan.estimator adds them)."""
    h = arch.hidden_size
    full = config.method == "full"
    # RMSNorm upcasts its input to fp32 and keeps it; with a trainable norm weight it also
    # keeps the normalised compute-dtype tensor. Two norms per layer (one without an MLP).
    norm = (4 * h if arch.rms_norm else b * h) + (b * h if full else 0)
    total: float = norm * (1 if kind.mlp == NO_MLP or kind.mixer == "none" else 2)
    total += _hyper_connections(arch, b)
    if kind.mixer in (ATTENTION, SLIDING):
        # a sliding window saves what full attention saves: flash/sdpa keep no scores, and
        # eager attention computes every key's score and masks those outside the window
        total += _attention(arch, config, b, kind.mixer)
    elif kind.mixer in (MLA, SPARSE_MLA):
        total += _mla(arch, config, b)
    elif kind.mixer == MAMBA2:
        total += _mamba2(arch, config, b)
    elif kind.mixer == HYBRID:
        total += _attention(arch, config, b) + _mamba2(arch, config, b)
    elif kind.mixer == MAMBA:
        total += _mamba1(arch, config, b)
    elif kind.mixer in ZAMBA1_KINDS:
        total += mamba1_heads_bytes(arch, config, b)
        if kind.mixer == SHARED_MAMBA1:
            scores = attention_scores_bytes(arch, config, b, config.seq_len)
            total += shared_block_bytes(arch, config, b, scores)
    elif kind.mixer == DELTANET:
        total += _deltanet(arch, config, b)
    elif kind.mixer == KDA:
        total += kda_bytes(arch, config, b, _cfg(arch))
    elif kind.mixer == LIGHTNING:
        total += lightning_bytes(arch, config, b)
    elif kind.mixer == RGLRU:
        total += rglru_bytes(arch, config, b)
    elif kind.mixer in REL_KINDS:
        total += rel_attention_bytes(arch, config, b, kind.mixer, runs_eager(arch, config))
    elif kind.mixer in CCA_KINDS:  # ZAYA: attention behind CCA projections, its router's MLP
        sliding = SLIDING if kind.mixer == CCA_SLIDING else ATTENTION
        total += _attention(arch, config, b, sliding) + cca_bytes(arch, config, b)
        total += zaya_router_bytes(arch, config, b) if kind.mlp == MOE else 0.0
    if kind.mlp == DENSE:
        total += _mlp(arch, config, b, arch.intermediate_size) + (b * h if full else 0)
    elif kind.mlp == MOE and arch.model_type in EVERY_EXPERT:
        # every expert runs on every token (scores zero the others): the repeated input and
        # its scaled copy, the fused gate_up output (the gate is a view of it), the activation
        # and the product, E times per token
        f = arch.moe_intermediate_size
        total += max(arch.num_experts, 1) * (2 * b * h + 4 * b * f)
        total += 4 * arch.num_experts  # router scores
        shared = _shared_expert_size(arch)
        if shared:
            total += _mlp(arch, config, b, shared)
        if full:
            total += b * h
    elif kind.mlp == MOE:
        k = max(arch.experts_per_token, 1)
        # each routed token is gathered (h) and runs its k experts' MLPs
        total += k * (_mlp(arch, config, b, arch.moe_intermediate_size) + b * h)
        total += 4 * arch.num_experts  # router logits / softmax
        shared = _shared_expert_size(arch)
        if shared:
            total += _mlp(arch, config, b, shared)
        if full:
            total += b * h
    return total


def backward_bytes(arch: ModelArch, config: TrainingConfig, kind: LayerKind, b: int = 2) -> float:
    """Gradients a layer's backward holds beside its saved tensors, per token, beyond the
    hidden-sized ones every layer has: the chunked scans' fp32 score gradients (two l x l
    per head while the masked scores' product is differentiated) and, for Mamba-2, the
    gradients of B and C repeated over the heads; eager attention's gradients of the
    probabilities and scores (as large as the probabilities it keeps)."""
    cfg = _cfg(arch)
    total = 0.0
    if kind.mixer in _ATTENDING:
        scores = attention_scores_bytes(arch, config, b, config.seq_len)
        total += scores if scores > arch.num_heads * 4 else 0.0  # eager only
    if kind.mixer in (MAMBA2, HYBRID):
        total += _mamba2_scan_backward(arch, config, b)[1]
    if kind.mixer == MAMBA:
        total += _mamba1_backward(arch)
    if kind.mixer in ZAMBA1_KINDS:
        total += mamba1_heads_backward(arch)
    if kind.mixer == DELTANET:
        hv = _int(cfg, "linear_num_value_heads", default=32)
        total += 4 * hv * 2 * _GDN_CHUNK * _padded(config.seq_len, _GDN_CHUNK)
    if kind.mixer == KDA:
        total += kda_backward(config, cfg)
    if kind.mixer in REL_KINDS:
        total += rel_attention_backward(arch, config, b, kind.mixer, runs_eager(arch, config))
    return total


def forward_bytes(arch: ModelArch, config: TrainingConfig, b: int, kind: LayerKind) -> float:
    """Transient tensors a layer's forward builds and drops, per token: DeepSeek sparse
    attention's lightning indexer scores every key per indexer head in fp32 (the scores and
    their ReLU), sums them into one fp32 score per key, and masks attention to its top-k
    with a dense mask."""
    if kind.mixer in REL_KINDS:
        return rel_attention_forward(arch, config, b, kind.mixer, runs_eager(arch, config))
    if kind.mixer == ATTENTION:  # DeepSeek-V4's CSA layers (engine.plan.dsv4)
        indexer = csa_indexer_bytes(_cfg(arch), config.seq_len, b)
        # it runs inside the attention, before the scores, the output and the MLP are saved
        later = _saved_after_indexer(arch, config, b, kind) + lora_inputs_after_attention(
            arch, config
        )
        return max(indexer - later, 0.0) if indexer else 0.0
    if kind.mixer != SPARSE_MLA:
        return 0.0
    cfg = _cfg(arch)
    heads = _int(cfg, "index_n_heads", default=64)
    dim = _int(cfg, "index_head_dim", default=128)
    rope = _int(cfg, "qk_rope_head_dim")
    keys = config.seq_len
    # the indexer's queries stay alive through its scoring: wq_b's output (a split view of it
    # is held), the roped part and their concatenation, in the compute dtype
    queries = heads * (2 * dim + rope) * b
    # the scoring matmul takes an fp32 copy of the queries beside its fp32 output; the scale
    # and the ReLU then hold two fp32 score tensors at once; then one score tensor meets the
    # fp32 per-key sum and its masked copy
    scoring = max(
        4 * heads * dim + 4 * heads * keys, 2 * 4 * heads * keys, 4 * heads * keys + 2 * 4 * keys
    )
    # LoRA's fp32 inputs of the Linears after the attention are not made yet either
    later = _saved_after_indexer(arch, config, b, kind) + lora_inputs_after_attention(arch, config)
    return queries + scoring - later


def _saved_after_indexer(arch: ModelArch, config: TrainingConfig, b: int, kind: LayerKind) -> float:
    """What a sparse-MLA layer has not yet saved when its indexer runs (after q, k and v are
    built): the attention's output (and o_proj's input), its log-sum-exp, the second norm and
    the MLP, so the indexer's transients meet only the layer's earlier saved tensors."""
    v_dim = _int(_cfg(arch), "v_head_dim", default=arch.head_dim)
    out = arch.num_heads * v_dim * b * (2 if config.method == "full" else 1)
    scores = attention_scores_bytes(arch, config, b, config.seq_len)
    mlp_side = layer_bytes(arch, config, b, kind) - layer_bytes(
        arch, config, b, LayerKind(kind.mixer, NO_MLP)
    )
    return out + scores + mlp_side
