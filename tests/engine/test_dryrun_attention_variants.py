"""Architectures whose code departs from the generic decoder: the analytic estimate follows
what their transformers code keeps (engine/plan/model_code.py, ModelArch's config keys). The
comparison with the dry run is tests/engine/test_coverage.py's, for every architecture."""

from __future__ import annotations

from engine.models import ModelArch
from engine.plan.model_code import (
    bert_style_bytes,
    mask_buffer_bytes,
    recurrent_stack,
    stack_config,
)
from engine.training_config import TrainingConfig


def _arch(model_type: str, **overrides: object) -> ModelArch:
    config = {"model_type": model_type, "hidden_size": 256, "num_attention_heads": 4}
    config.update(overrides)
    return ModelArch(name=model_type, source="dir", config=config)


def test_cpmant_and_ctrl_ffn_sizes_come_from_their_own_keys() -> None:
    cpmant = _arch("cpmant", dim_ff=10240, dim_head=128, num_hidden_layers=2)
    assert (cpmant.intermediate_size, cpmant.head_dim) == (10240, 128)
    ctrl = _arch("ctrl", dff=8192, n_layer=2)
    assert ctrl.intermediate_size == 8192 and not ctrl.gated_mlp and not ctrl.rms_norm
    assert _arch("opt", ffn_dim=512).intermediate_size == 512


def test_cpmant_layers_see_the_prompt_positions() -> None:
    arch = _arch("cpmant", prompt_length=32, num_hidden_layers=2)
    assert stack_config(arch, TrainingConfig(seq_len=128)).seq_len == 160
    assert stack_config(_arch("llama"), TrainingConfig(seq_len=128)).seq_len == 128


def test_gpt_bigcode_keeps_its_causal_mask_buffer() -> None:
    arch = _arch("gpt_bigcode", n_positions=1024, n_layer=2)
    assert mask_buffer_bytes(arch) == 1024**2
    assert mask_buffer_bytes(_arch("llama", max_position_embeddings=1024)) == 0.0


def test_bert_style_head_and_hrm_runs() -> None:
    embeddings, head = bert_style_bytes(_arch("roberta-prelayernorm"), TrainingConfig(), 2)
    assert embeddings == 2 * 2 * 256 and head == 3 * 2 * 256 + 4 * 256
    hrm = _arch(
        "hrm_text", num_layers_per_stack=16, H_cycles=2, L_cycles=3, L_bp_cycles=[2],
        num_hidden_layers=2,
    )  # fmt: skip
    # L_bp_cycles padded to [1, 2]: 3 graded L runs and 2 H runs of 16 layers
    assert recurrent_stack(hrm) == (32, 80)
