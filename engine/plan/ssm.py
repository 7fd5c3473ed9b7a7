"""State-space and linear-attention token mixers: what their PyTorch reference scans save for
backward per token (Mamba-2's chunked scan, Mamba-1's selective scan, gated delta-net), for
engine/plan/activations.py. No torch.
"""

from __future__ import annotations

import math
from typing import Any

from engine.models import ModelArch
from engine.training_config import TrainingConfig

GDN_CHUNK = 64  # torch_chunk_gated_delta_rule's chunk size


def config_int(cfg: dict[str, Any], *keys: str, default: int = 0) -> int:
    """The first of `keys` set to a non-zero number in `cfg`, else `default`."""
    for key in keys:
        value = cfg.get(key)
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and value:
            return int(value)
    return default


def padded(seq: int, chunk: int) -> float:
    """Padded length per real token: the chunked scans pad the sequence to whole chunks."""
    return math.ceil(seq / chunk) * chunk / seq if chunk else 1.0


def mamba2_inner(arch: ModelArch) -> int:
    cfg = arch.text_config
    heads = config_int(cfg, "mamba_n_heads", "mamba_num_heads", "n_mamba_heads", default=1)
    inner = config_int(cfg, "mamba_d_ssm")
    if not inner:
        head_dim = config_int(cfg, "mamba_d_head", "mamba_head_dim", "mamba_headdim")
        expand = config_int(cfg, "mamba_expand", default=2)
        inner = heads * head_dim if head_dim else expand * arch.hidden_size
    return inner


def mamba2_bytes(arch: ModelArch, config: TrainingConfig, b: int) -> float:
    """Mamba-2's PyTorch chunked scan (transformers' torch_forward / mamba2_chunk_scan): the
    projections in the compute dtype, then fp32 chunk tensors per padded token: B and C per
    head (n each, repeated over the heads of a group), the l x l decay, scores and masked
    scores per head within a chunk, and the head_dim-sized inputs, outputs and states."""
    cfg = arch.text_config
    h = arch.hidden_size
    heads = config_int(cfg, "mamba_n_heads", "mamba_num_heads", "n_mamba_heads", default=1)
    state = config_int(cfg, "mamba_d_state", "ssm_state_size", "state_size", default=128)
    groups = config_int(cfg, "mamba_n_groups", "mamba_ngroups", "n_groups", default=1)
    chunk = config_int(cfg, "mamba_chunk_size", "chunk_size", default=256)
    inner = mamba2_inner(arch)
    p = inner / heads
    conv = inner + 2 * groups * state
    # in_proj's output (gate, x/B/C, dt), the conv's input and SiLU output, the gated output;
    # the scan's fp32 input, its dt-scaled copy and the skip term
    total: float = b * (inner + conv + heads) + 2 * b * conv + mamba2_output_side(arch, b)
    total += 4 * heads * 3 * p
    # per padded token, per head: the l x l decay, scores and masked scores; B, C and the
    # decayed B (state-sized); the chunked inputs, outputs and their parts (head_dim)
    scan = 4 * heads * (3 * chunk + 3 * state + 5 * p + 6)
    total += scan * padded(config.seq_len, chunk)
    if config.method == "full":
        total += b * (h + inner)  # in_proj's and out_proj's inputs
    return total


def mamba2_output_side(arch: ModelArch, b: int) -> float:
    """Per token, what mamba2_bytes counts after the scan: the gated norm's output (fp32 and
    in the compute dtype, out_proj's input)."""
    inner = mamba2_inner(arch)
    return 2 * b * inner + 4 * inner


def mamba2_scan_transient(arch: ModelArch, config: TrainingConfig) -> float:
    """Per token, what the chunked scan's forward holds when it returns beyond what it saves:
    the intra- and inter-chunk outputs (Y_diag, Y_off), their sum's contiguous copy and the
    skip term, fp32 and head_dim-sized per head and padded token."""
    _, _, _, chunk, inner = _mamba2_dims(arch)
    return 4 * 4 * inner * padded(config.seq_len, chunk)


def _mamba2_dims(arch: ModelArch) -> tuple[int, int, int, int, int]:
    """Heads, state size, groups, chunk size and inner width of a Mamba-2 mixer."""
    cfg = arch.text_config
    heads = config_int(cfg, "mamba_n_heads", "mamba_num_heads", "n_mamba_heads", default=1)
    state = config_int(cfg, "mamba_d_state", "ssm_state_size", "state_size", default=128)
    groups = config_int(cfg, "mamba_n_groups", "mamba_ngroups", "n_groups", default=1)
    chunk = config_int(cfg, "mamba_chunk_size", "chunk_size", default=256)
    return heads, state, groups, chunk, mamba2_inner(arch)


def mamba2_scan_backward(arch: ModelArch, config: TrainingConfig, b: int) -> tuple[float, float]:
    """Per token, what a Mamba-2 mixer holds when backward reaches the chunked scan's
    intra-chunk product (M = G * L, its largest moment), and the gradients made by then.
    Backward runs the scan in reverse: the output side, the inter-chunk states and their
    einsums' saved inputs are freed by then. Still held: in_proj's output (the conv's input is
    a view of it), the conv's output (SiLU's input), the scan's fp32 input (saved by the dt
    scaling), the padded B and C (the score einsum's inputs), the l x l decay and scores; in a
    full fine-tune also in_proj's input and the padded skip input (D is trainable). Gradients:
    the gate's (waiting for in_proj's split to have all three), the padded output's (the skip
    term's backward runs last), B's, C's and the input's; the l x l ones of M, G and L."""
    heads, state, groups, chunk, inner = _mamba2_dims(arch)
    p = inner / heads
    conv = inner + 2 * groups * state
    pad = padded(config.seq_len, chunk)
    skip = p if config.method == "full" else 0.0
    held: float = b * (inner + conv + heads) + b * conv + 4 * inner
    held += 4 * heads * (2 * chunk + 2 * state + skip) * pad
    if config.method == "full":
        held += b * arch.hidden_size  # in_proj's input, for its weight's gradient
    grads = b * inner + 4 * heads * (3 * chunk + 2 * state + 2 * p) * pad
    return held, grads


def mamba1_bytes(arch: ModelArch, config: TrainingConfig, b: int) -> float:
    """Mamba-1's PyTorch selective scan: per token and channel, the discretised A and B·u
    (state-sized, fp32) and the scan's state, plus the projections; the loop's matmul with
    C keeps each step's state cast to the compute dtype too."""
    cfg = arch.text_config
    h = arch.hidden_size
    inner = config_int(cfg, "mamba_expand", "expand", default=2) * h
    state = config_int(cfg, "mamba_d_state", "state_size", default=16)
    rank = config_int(cfg, "mamba_dt_rank", "time_step_rank", default=max(h // 16, 1))
    total: float = b * (4 * inner + rank + 2 * state) + (4 * 3 + b) * inner * state
    if config.method == "full":
        total += b * (h + inner + rank)
    return total


def mamba1_backward(arch: ModelArch) -> float:
    """The scan loop reads discrete_A[:, :, i] and deltaB_u[:, :, i]: each step's gradient
    comes back as a full-size fp32 select_backward tensor, summed into one buffer per
    input, so backward holds the two buffers and the incoming step's tensor."""
    cfg = arch.text_config
    inner = config_int(cfg, "mamba_expand", "expand", default=2) * arch.hidden_size
    return 3 * 4 * inner * config_int(cfg, "mamba_d_state", "state_size", default=16)


def deltanet_bytes(arch: ModelArch, config: TrainingConfig, b: int) -> float:
    """Gated delta-net (torch_chunk_gated_delta_rule): q/k repeated to the value heads and
    l2-normalised, padded, beta-scaled and decayed copies in fp32 per padded token; chunk x
    chunk decay and attention matrices per head; per chunk, the recurrent state."""
    cfg = arch.text_config
    h = arch.hidden_size
    dk = config_int(cfg, "linear_key_head_dim", default=128)
    dv = config_int(cfg, "linear_value_head_dim", default=128)
    hk = config_int(cfg, "linear_num_key_heads", default=16)
    hv = config_int(cfg, "linear_num_value_heads", default=32)
    c = GDN_CHUNK
    proj = hv * dv + 2 * hv  # z (the output gate), beta and the decay's input
    conv = 2 * hk * dk + hv * dv  # the causal conv's input and SiLU output
    total: float = b * (proj + 2 * conv + 2 * hv * dv) + 4 * hv * dv * 2  # the gated RMSNorm
    # fp32, per value head: q and k before l2norm, padded, scaled, beta-scaled, decayed
    # and solved (9 x dk); v padded, beta-scaled, solved and corrected (5 x dv); the chunk x
    # chunk decay, key products and intra-chunk attention (5 x chunk); a state per chunk
    per_head = 9 * dk + 5 * dv + 5 * c + dk * dv / c
    total += 4 * hv * per_head * padded(config.seq_len, c)
    if config.method == "full":
        total += b * (h + hv * dv)
    return total
