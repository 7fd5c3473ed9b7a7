"""`ftui demo`: a tiny model and a learnable dataset, built locally, trained on CPU."""

from __future__ import annotations

from pathlib import Path

from engine.paths import ftui_home
from engine.runspec import Hyper, RunSpec
from engine.training_config import TrainingConfig


def demo_dir() -> Path:
    return ftui_home() / "demo"


def ensure_demo_assets() -> tuple[Path, Path]:
    """(model dir, dataset file), built on first use and reused after."""
    from engine.tiny import build_tiny_model, write_demo_dataset

    model_dir = demo_dir() / "tiny-model"
    if not (model_dir / "model.safetensors").exists():
        build_tiny_model(model_dir)
    data = demo_dir() / "secret-fruits.jsonl"
    if not data.exists():
        write_demo_dataset(data)
    return model_dir, data


def demo_spec(*, max_steps: int = 120) -> RunSpec:
    model_dir, data = ensure_demo_assets()
    return RunSpec(
        model="ftui-tiny",
        model_path=str(model_dir),
        data=str(data),
        name="demo",
        device="cpu",
        training=TrainingConfig(
            method="lora",
            rank=16,
            alpha=32,
            batch=8,
            seq_len=128,
            grad_ckpt=False,
            dtype="fp32",
        ),
        hyper=Hyper(
            max_steps=max_steps,
            learning_rate=5e-3,
            warmup_ratio=0.05,
            logging_steps=1,
            save_steps=40,
            save_total_limit=2,
        ),
    ).validate()
