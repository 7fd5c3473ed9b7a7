"""Mamba-2 hybrids in the analytic tier: Zamba's layer layout and the chunked scan's peaks."""

from __future__ import annotations

from typing import Any

from engine.models import ModelArch
from engine.plan.activations import DENSE, HYBRID, MAMBA2, NO_MLP, layer_kinds
from engine.plan.layer_peaks import block_before_scan
from engine.plan.ssm import mamba2_bytes, mamba2_scan_backward, mamba2_scan_transient
from engine.training_config import TrainingConfig


def _zamba2() -> dict[str, Any]:
    return {
        "model_type": "zamba2",
        "architectures": ["Zamba2ForCausalLM"],
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 512,
        "vocab_size": 2048,
        "layers_block_type": ["mamba", "mamba", "mamba", "hybrid"],
        "mamba_d_state": 64,
        "mamba_headdim": 64,
        "n_mamba_heads": 8,
        "mamba_ngroups": 1,
        "chunk_size": 256,
    }


def test_zamba_mamba_layers_have_no_mlp_and_the_hybrid_runs_its_block_first() -> None:
    arch = ModelArch(name="zamba2", source="dir", config=_zamba2())
    kinds = layer_kinds(arch)
    assert [k.mixer for k in kinds] == [MAMBA2, MAMBA2, MAMBA2, HYBRID]
    assert [k.mlp for k in kinds] == [NO_MLP, NO_MLP, NO_MLP, DENSE]
    assert block_before_scan(arch)


def test_scan_backward_holds_less_than_the_scan_saves() -> None:
    """At the intra-chunk product's backward the later steps' tensors are freed: what is held
    is below what the mixer saved, and both follow the padding of a short sequence."""
    arch = ModelArch(name="zamba2", source="dir", config=_zamba2())
    short = TrainingConfig(method="lora", seq_len=128)
    whole = TrainingConfig(method="lora", seq_len=256)
    held, grads = mamba2_scan_backward(arch, short, 2)
    assert 0 < held < mamba2_bytes(arch, short, 2)
    assert grads > 0
    # 128 tokens pad to one chunk of 256: per token, twice the chunk tensors of 256 tokens
    assert mamba2_scan_transient(arch, short) == 2 * mamba2_scan_transient(arch, whole)
    full = TrainingConfig(method="full", seq_len=128)
    assert mamba2_scan_backward(arch, full, 2)[0] > held  # trainable D and in_proj's input
