"""DeepSeek-V4's lightning indexer: the transient a compressed-sparse-attention (CSA) layer's
forward holds while it picks its top-k compressed KV blocks.

transformers' DeepseekV4Indexer runs with autograd on (no `torch.no_grad`): it scores every
query against the `seq_len / compress_rate` compressed keys per indexer head in fp32
(DeepseekV4IndexerScorer: `matmul(q.float(), k.float())`, ReLU, the softmax scale, the
per-head weights, then a sum over heads). Only the top-k *indices* leave it, so the graph and
what it saved die when it returns; but while the weighted product is built, the roped
queries (compute dtype), their fp32 copy (saved by the matmul), the ReLU's output (saved by
the ReLU), its scaled copy (saved by the weighting product) and the product itself are all
alive. In a checkpointed run that moment recurs in the recomputed forward of a CSA layer,
next to that layer's saved tensors, and it dominates the layer at long sequences.
"""

from __future__ import annotations

from typing import Any

from engine.models import ModelArch
from engine.plan.param_targets import adapted_groups
from engine.plan.params import attached_roles
from engine.training_config import TrainingConfig

CSA = "compressed_sparse_attention"


def csa_indexer_bytes(cfg: dict[str, Any], seq_len: int, b: int) -> float:
    """Per token: the indexer's peak transient in a model with CSA layers (0 without any).

    The roped queries (b x heads x dim), their fp32 copy, and three fp32 score tensors over
    the compressed keys (the ReLU output, its scaled copy and the per-head weighted product)."""
    layer_types = cfg.get("layer_types") or ()
    rates = cfg.get("compress_rates")
    if CSA not in layer_types or not isinstance(rates, dict):
        return 0.0
    rate = rates.get(CSA)
    heads = cfg.get("index_n_heads")
    dim = cfg.get("index_head_dim")
    if not all(isinstance(v, int) and v > 0 for v in (rate, heads, dim)):
        return 0.0
    assert isinstance(rate, int) and isinstance(heads, int) and isinstance(dim, int)
    keys = seq_len // rate
    return heads * dim * (b + 4) + 3 * 4 * heads * keys


# Linears that run after the attention's scores: the output projection and the MLP's. PEFT's
# fp32 copies of their inputs do not exist yet while the indexer runs (gate_proj is left out:
# the CSA/HCA compressors, which run before the indexer, have one of that name too).
_AFTER_ATTENTION = frozenset(
    {"o_proj", "o_a_proj", "o_b_proj", "out_proj", "up_proj", "down_proj", "gate_up_proj"}
)


def lora_inputs_after_attention(arch: ModelArch, config: TrainingConfig) -> float:
    """Per token per layer: the fp32 inputs PEFT keeps for the adapted Linears that run after
    the attention, which the estimator counts for the whole layer but which are not yet made
    when the indexer's transient peaks."""
    roles = attached_roles(arch) if config.is_peft else None
    if roles is None:
        return 0.0
    layers = max(arch.num_layers, 1)
    return sum(
        4 * group.in_features / layers
        for group in adapted_groups(roles, config)
        if group.name in _AFTER_ATTENTION and not group.tower
    )
