"""DeepSeek-V4's compressed sparse attention: the lightning indexer, which runs with autograd on,
holds its queries and fp32 scores over the compressed keys while the recomputed layer is alive;
the analytic estimate counts that moment (the comparison with the dry run is
tests/engine/test_coverage.py's)."""

from __future__ import annotations

from engine.plan.dsv4 import csa_indexer_bytes


def test_indexer_transient_follows_the_compressed_keys() -> None:
    cfg = {
        "layer_types": ["heavily_compressed_attention", "compressed_sparse_attention"],
        "compress_rates": {"compressed_sparse_attention": 4, "heavily_compressed_attention": 128},
        "index_n_heads": 64,
        "index_head_dim": 128,
    }
    # roped queries (bf16) + their fp32 copy + three fp32 scores over seq/4 compressed keys
    assert csa_indexer_bytes(cfg, 512, 2) == 64 * 128 * 6 + 3 * 4 * 64 * 128
    assert csa_indexer_bytes({**cfg, "layer_types": ["sliding_attention"]}, 512, 2) == 0.0
    assert csa_indexer_bytes({}, 512, 2) == 0.0
