"""The run spec: YAML round trip, and validation errors that name the field and the fix."""

from __future__ import annotations

import pytest

from engine.run.spec import Distributed, Hyper, RunSpec, SpecError
from engine.training_config import TrainingConfig


def spec(**changes: object) -> RunSpec:
    base = RunSpec(model="llama-3.1-8b", data="/data/train.jsonl", model_path="/models/llama")
    return base.with_changes(**changes)


def test_yaml_round_trip_keeps_every_field() -> None:
    original = spec(
        name="my-run",
        eval_fraction=0.05,
        training=TrainingConfig(
            method="qlora",
            rank=64,
            alpha=16,
            targets=("q_proj", "v_proj"),
            batch=4,
            grad_accum=8,
            seq_len=4096,
            num_gpus=2,
            sharding="fsdp",
        ),
        hyper=Hyper(epochs=3, learning_rate=1e-4, lr_scheduler="linear", save_steps=200),
        distributed=Distributed(
            launcher="accelerate", nodes=2, node_rank=1, master_addr="10.0.0.1"
        ),
    ).validate()
    text = original.to_yaml()
    assert "training:" in text and "rank: 64" in text
    assert RunSpec.from_yaml(text) == original


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("model: m\ndata: d\ntraining: {rank: 0}\n", "training"),
        ("model: m\ndata: d\nhyper: {learning_rate: 5}\n", "hyper.learning_rate"),
        ("model: m\ndata: d\nhyper: {learning_rate: '2e-4x'}\n", "hyper.learning_rate"),
        ("model: m\ndata: d\nhyper: {lr_scheduler: zigzag}\n", "hyper.lr_scheduler"),
        ("model: m\ndata: d\ndistributed: {nodes: 2, node_rank: 2}\n", "distributed.node_rank"),
        ("model: m\ndata: d\ntraning: {rank: 8}\n", "traning"),
        ("model: m\ndata: d\ntraining: {rnak: 8}\n", "training.rnak"),
        ("model: m\ndata: ''\n", "data"),
        ("model: m\ndata: d\ndevice: tpu\n", "device"),
        ("- just\n- a list\n", "mapping"),
        ("model: [unclosed\n", "YAML"),
    ],
)
def test_bad_specs_name_the_field(yaml_text: str, field: str) -> None:
    with pytest.raises(SpecError) as info:
        RunSpec.from_yaml(yaml_text)
    assert field in info.value.message
    assert info.value.fix


def test_one_process_launcher_refuses_several_gpus() -> None:
    with pytest.raises(SpecError, match=r"distributed\.launcher"):
        spec(
            training=TrainingConfig(num_gpus=2), distributed=Distributed(launcher="python")
        ).validate()
