"""Token mixers that are not plain attention: the analytic tier models what their PyTorch
code saves for backward (Inkling's relative-bias attention, RecurrentGemma's RG-LRU,
MiniMax's lightning attention) within 10% of the dry run on shrunk configs; Inkling 2's
lm_head is unpadded_vocab_size wide and softcaps its logits in fp32; Jamba's Mamba-1 scan
loop gets its gradients step by step into full-size buffers."""

from __future__ import annotations

import warnings

import pytest

from engine.models import ModelArch
from engine.plan.dryrun.coverage import small_config
from engine.plan.estimator import estimate_memory
from engine.plan.params import param_roles
from engine.training_config import TrainingConfig

pytest.importorskip("peft")
pytest.importorskip("transformers")


def _error(model_type: str, method: str, seq_len: int) -> float:
    """(analytic - dry) / dry for one setup, configured as the coverage check does."""
    from engine.plan.dryrun.entry import dry_run

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config, _ = small_config(model_type)
    arch = ModelArch(name=model_type, source="dir", config=config)
    roles = param_roles(arch)
    training = TrainingConfig(
        method=method,
        pure_bf16=method == "full",
        seq_len=seq_len,
        grad_ckpt=roles.checkpointing if roles else True,
    )
    dry = dry_run(arch, training).peak_allocated_bytes
    return (estimate_memory(arch, training).allocated_bytes - dry) / dry


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model_type", "method", "seq_len"),
    [
        ("inkling_text", "lora", 512),  # relative-bias attention on the mem-efficient kernel
        ("recurrent_gemma", "full", 128),  # RG-LRU scan state and its retained graph
        ("minimax", "lora", 128),  # lightning attention's per-block decayed scores
        ("inkling2_text", "lora", 512),  # fp32 softcapped logits, unpadded_vocab_size wide
        ("jamba", "lora", 32),  # Mamba-1's per-step select_backward gradient buffers
    ],
)
def test_the_analytic_estimate_follows_non_attention_mixers(
    model_type: str, method: str, seq_len: int
) -> None:
    assert abs(_error(model_type, method, seq_len)) < 0.10
