"""Parameters a 16-bit model keeps in fp32, and the loss moment of a full fine-tune."""

from __future__ import annotations

import pytest

from engine.models import ModelArch
from engine.plan.counts import ParamCounts
from engine.plan.fp32_params import kept_fp32, kept_fp32_states
from engine.plan.loss_head import head_gradient_bytes, loss_moment
from engine.training_config import TrainingConfig

# 1000 parameters, 100 of them an untied head kept in fp32 and 10 more fp32 ones never updated
PARAMS = ParamCounts(
    total=1000, embedding=100, lm_head=100, linear=700, other=100, trainable=1000,
    per_layer_linear=350, lora=0, idle=10, fp32=120, fp32_head=100, fp32_idle=10,
    fp32_quantizable=5,
)  # fmt: skip


def test_the_census_reads_the_load_dtype_and_the_head() -> None:
    counts = {"bf16": {"lm_head": 100, "router": 20, "no_gradient": 10, "quantizable": 5}}
    kept = kept_fp32(counts, "bf16", tied=False)
    assert (kept.total, kept.head, kept.idle, kept.quantizable) == (120, 100, 10, 5)
    assert kept_fp32(counts, "fp16", tied=False).total == 0
    assert kept_fp32(counts, "bf16", tied=True).head == 0


def test_fp32_parameters_cost_two_more_bytes_in_a_pure_bf16_full_fine_tune() -> None:
    config = TrainingConfig(method="full", pure_bf16=True)
    wide = kept_fp32_states(PARAMS, config, 2)
    assert wide.trainable == 2 * 120
    assert wide.gradients == 2 * 110  # the idle ones get no gradient
    assert wide.optimizer == 110 * (8 - 4)  # AdamW's two states
    assert wide.optimizer_temp == 110 * 2
    assert kept_fp32_states(PARAMS, TrainingConfig(method="full"), 2).trainable == 0  # masters
    assert kept_fp32_states(PARAMS, TrainingConfig(method="lora"), 2).frozen == 2 * 120
    assert kept_fp32_states(PARAMS, TrainingConfig(method="qlora"), 2).frozen == 2 * 115
    eight_bit = TrainingConfig(method="lora", base_bits=8)
    assert kept_fp32_states(PARAMS, eight_bit, 2).frozen == 2 * 115  # its Linears are int8
    assert kept_fp32_states(PARAMS, TrainingConfig(method="prompt"), 2).frozen == 2 * 120
    assert kept_fp32_states(PARAMS, TrainingConfig(method="bias"), 2).frozen == 0  # masters


def test_the_heads_gradient_comes_after_the_loss_working_set() -> None:
    config = TrainingConfig(method="full", pure_bf16=True)
    grads = 2 * 990 + 2 * 110
    head = head_gradient_bytes(PARAMS, config, 2, grads)
    assert head == pytest.approx(4 * 100)  # an fp32 head's gradient is fp32
    arch = ModelArch(name="t", source="dir", config={"vocab_size": 50, "hidden_size": 8})
    # logits of 10 tokens x 50 at 12 bytes; their fp32 gradient after the loss is 4 bytes each
    moment = loss_moment(
        arch, saved=30.0, at_loss=30.0 + 6000, logits=6000.0, tokens=10,
        resident_grads=0.0, head_grads=head, logit_bytes=4,
    )  # fmt: skip
    assert moment.bytes == 30 + 6000  # the loss's working set, without the head's gradient
    small = loss_moment(
        arch, saved=30.0, at_loss=30.0 + 600, logits=600.0, tokens=10,
        resident_grads=0.0, head_grads=10_000.0, logit_bytes=2,
    )  # fmt: skip
    assert small.bytes == 10_000 + 30 + min(600, 2 * 50 * 10)
    assert small.gradients == 10_000
