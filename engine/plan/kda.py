"""Kimi delta attention (KDA: Kimi-Linear, Bailing-Hybrid), per token, in bytes.

KDA is a gated delta rule whose decay is per key channel, not per head. transformers' PyTorch
`chunk_kimi_delta_attention` (what runs without flash-linear-attention's kernel) keeps that
decay per channel in its chunk x chunk products: the decay mask, the key products and each
chunk's query products are chunk x chunk x key-dim fp32 tensors per head, saved for
backward. They dominate the layer (64 x 128 floats per token and head at full size).
No torch import: engine.plan stays light.
"""

from __future__ import annotations

import math
from typing import Any

from engine.models import ModelArch
from engine.training_config import TrainingConfig

KDA = "kimi_delta"  # Kimi delta attention (Kimi-Linear, Bailing-Hybrid)
KDA_CHUNK = 64  # chunk_kimi_delta_attention's chunk size


def kda_mixer(cfg: dict[str, Any], name: str) -> str | None:
    """KDA for a linear-attention layer of a config sized by linear_head_dim (gated
    delta-net configs name key and value head dims apart)."""
    kda = name == "linear_attention" and "linear_head_dim" in cfg
    return KDA if kda and "linear_key_head_dim" not in cfg else None


def _dims(cfg: dict[str, Any]) -> tuple[int, int]:
    heads = cfg.get("linear_num_heads")
    dim = cfg.get("linear_head_dim")
    return (heads if isinstance(heads, int) else 32), (dim if isinstance(dim, int) else 128)


def _padded(seq: int) -> float:
    return math.ceil(seq / KDA_CHUNK) * KDA_CHUNK / seq


def kda_bytes(arch: ModelArch, config: TrainingConfig, b: int, cfg: dict[str, Any]) -> float:
    """Saved tensors of one KDA layer per token (b: bytes of the compute dtype).

    Compute dtype: the causal conv's input and output over q, k and v; the norm's output
    (o_proj's input). fp32 (4 bytes) per channel: the forget gate's exp, 1 + exp and softplus
    (and its bool mask), the output gate's cast and sigmoid, the gated RMSNorm's input,
    normalised and weighted copies. Per head in the chunked rule (fp32, per padded token):
    q and k before l2norm; padded q, k, v; cumulative decay; beta-scaled k and v; exp decay,
    decayed k_beta and k_cumdecay (dk each, 13 dk with the four per-chunk dk tensors of the
    state loop); v_new and two more v-sized (3 dv); the decay mask, the key product and each
    chunk's query product (3 x chunk x dk); the in-place solve's row x prefix products
    (chunk^2 / 3) and chunk-wide attention rows (2 x chunk); a recurrent state per chunk."""
    heads, dk = _dims(cfg)
    d = heads * dk
    c = KDA_CHUNK
    total: float = b * (2 * 3 * d + d) + 4 * (3 * d + 2 * d + 3 * d) + d
    per_head = 3 * c * dk + c * c / 3 + 2 * c + 13 * dk + 3 * dk + dk * dk / c
    total += 4 * heads * per_head * _padded(config.seq_len)
    if config.method == "full":
        total += b * (arch.hidden_size + d)
    return total


def kda_backward(config: TrainingConfig, cfg: dict[str, Any]) -> float:
    """Backward's transients per token: the gradients of the decay mask and of the key
    product, and the product they are summed from (3 x chunk x dk fp32 per head)."""
    heads, dk = _dims(cfg)
    return 4 * heads * 3 * KDA_CHUNK * dk * _padded(config.seq_len)
