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
