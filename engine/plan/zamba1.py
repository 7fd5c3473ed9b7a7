"""Zamba-1 (transformers' models/zamba): what its layers save for backward per token, for
engine/plan/activations.py.

Its Mamba blocks are Mamba-1 (a dt projection of rank `mamba_dt_rank`) with the inner
channels split into `n_mamba_heads` heads, each head's selective scan run on its own, one
after another (ZambaMambaMixer's "per head scans"). A Mamba layer is a norm and that block,
with no MLP. A hybrid layer first runs the shared transformer block on the concatenation of
the hidden state and the original embeddings (`attention_hidden_size`, twice the hidden
size): its norm, attention with `attention_head_dim` heads and no rotary embedding, then a
norm and the MLP; a per-layer linear projects its output, which is added to the Mamba block's
input. Pure Python, no torch.
"""

from __future__ import annotations

from typing import Any

from engine.models import ModelArch
from engine.plan.ssm import config_int
from engine.training_config import TrainingConfig

MAMBA1_HEADS = "mamba1_heads"  # Zamba's Mamba layer: a per-head Mamba-1 scan, no MLP
SHARED_MAMBA1 = "shared_attention_mamba1"  # Zamba's hybrid: shared block, linear, Mamba-1
ZAMBA1_KINDS = frozenset({MAMBA1_HEADS, SHARED_MAMBA1})

# Gradient buffers one head's scan backward holds at once, each as large as the head's
# discretised A: the two inputs' accumulating gradients (discrete A, B·u), the step's
# incoming one, and their sum, made out of place before the old buffer is freed (autograd
# accumulates in place only into plain tensors: never under the dry run's fake tensors)
_SCAN_GRAD_BUFFERS = 4


def per_head_mamba1(cfg: dict[str, Any]) -> bool:
    """A Mamba-1 block (it has a dt rank; Mamba-2 has none) split into heads."""
    return "mamba_dt_rank" in cfg and config_int(cfg, "n_mamba_heads") > 0


def _dims(arch: ModelArch) -> tuple[int, int, int, int, int]:
    """Inner channels, heads, state size, dt rank and conv width."""
    cfg = arch.text_config
    h = arch.hidden_size
    inner = config_int(cfg, "mamba_expand", default=2) * h
    heads = config_int(cfg, "n_mamba_heads", default=1)
    state = config_int(cfg, "mamba_d_state", default=16)
    rank = config_int(cfg, "mamba_dt_rank", default=-(-h // 16))
    conv = config_int(cfg, "mamba_d_conv", default=4)
    return inner, heads, state, rank, conv


def scan_heads(arch: ModelArch) -> int:
    """How many scans a Mamba layer runs one after another."""
    return _dims(arch)[1]


def mamba1_heads_bytes(arch: ModelArch, config: TrainingConfig, b: int) -> float:
    """ZambaMambaMixer's PyTorch path, all heads together. In the compute dtype: in_proj's
    output (the gate is a view of it, kept by its SiLU), the conv's contiguous input and its
    padded output, x_proj's output (dt, B and C are views: C is read by every step), dt plus
    its bias and its softplus. In fp32: x and B upcast for B·u, then per channel and state
    the discretised A and B, each step's state and its compute-dtype cast for the product
    with C; the skip-added output and SiLU(gate) kept by the gating product. A full
    fine-tune also keeps in_proj's input, the conv's SiLU output (x_proj's and D's input)
    and out_proj's input."""
    inner, heads, state, rank, conv = _dims(arch)
    seq = max(config.seq_len, 1)
    total: float = b * inner * (2 + 1 + (seq + conv - 1) / seq + 2)
    total += b * heads * (rank + 2 * state)
    total += 4 * inner + 4 * heads * state  # x and B in fp32
    total += (3 * 4 + b) * inner * state  # discretised A and B, the states and their casts
    total += 4 * inner + b * inner  # the skip-added output (fp32) and SiLU(gate)
    if config.method == "full":
        total += b * (arch.hidden_size + 2 * inner)
    return total


def mamba1_heads_backward(arch: ModelArch) -> float:
    """What one head's scan backward holds beside the saved tensors (see _SCAN_GRAD_BUFFERS)."""
    inner, heads, state, _, _ = _dims(arch)
    return _SCAN_GRAD_BUFFERS * 4 * inner / heads * state


def freed_before_scan(arch: ModelArch, config: TrainingConfig, b: int) -> float:
    """What the backward frees before it reaches the scans: the gating product's operands
    of the last head and out_proj's input (full); every other part of the layer (the
    shared block and its MLP run first) is still saved."""
    inner, heads, _, _, _ = _dims(arch)
    freed = (4 + b) * inner / heads
    return freed + (b * inner if config.method == "full" else 0.0)


def shared_block_bytes(arch: ModelArch, config: TrainingConfig, b: int, scores: float) -> float:
    """The hybrid layer's shared transformer block before its MLP (engine.plan.activations
    counts the MLP, its norm and the Mamba block's norm): the norm over the concatenation
    (its fp32 input), q, k, v and the attention output (no rotary: views of the projections)
    and `scores` (what the attention keeps per head); a full fine-tune also keeps the norm's
    output (q/k/v's input), o_proj's input and the linear's input."""
    cfg = arch.text_config
    h = arch.hidden_size
    width = config_int(cfg, "attention_hidden_size", default=2 * h)
    head_dim = config_int(cfg, "attention_head_dim", default=width // max(arch.num_heads, 1))
    qd = arch.num_heads * head_dim
    kvd = arch.num_kv_heads * head_dim
    total: float = 4 * width + b * (2 * qd + 2 * kvd) + scores
    if config.method == "full":
        total += b * (2 * width + qd + h)
    return total
