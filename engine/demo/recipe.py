"""`ftui demo`: a tiny model and a learnable dataset, built locally, trained on CPU.

The recipe learns every time: fresh trainings answer all 64 training prompts exactly, for
every seed tried (`python benchmarks/demo_stability.py`; docs/benchmarks.md, "Demo training").
That rests on the tiny model's pre-training (engine/demo/tiny.py: a base that knows the fruit words
and copies the colour) and on the seeded adapter initialisation (engine/run/train.py); 300 steps
are twice what the adapter needs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from engine.errors import FtuiError
from engine.paths import ftui_home
from engine.run.spec import Hyper, RunSpec
from engine.training_config import TrainingConfig

TINY_MODEL_VERSION = 2  # bump when engine/demo/tiny.py builds a different model


def demo_dir() -> Path:
    return ftui_home() / "demo"


def demo_model_dir() -> Path:
    """Versioned: a home built by an older ftui keeps its model for the runs trained on it,
    and the demo builds the current recipe beside it."""
    return demo_dir() / f"tiny-model-v{TINY_MODEL_VERSION}"


def ensure_demo_assets(
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[Path, Path]:
    """(model dir, dataset file), built on first use and reused after; `progress(step,
    steps, loss)` follows the tiny model's pre-training when it is built."""
    from engine.demo.tiny import build_tiny_model, write_demo_dataset

    model_dir = demo_model_dir()
    if not (model_dir / "model.safetensors").exists():
        build_tiny_model(model_dir, progress=progress)
    data = demo_dir() / "secret-fruits.jsonl"
    if not data.exists():
        write_demo_dataset(data)
    return model_dir, data


DEMO_STEPS = 300


def demo_spec(
    *, max_steps: int = DEMO_STEPS, progress: Callable[[int, int, float], None] | None = None
) -> RunSpec:
    if max_steps < 1:
        raise FtuiError(
            f"the demo needs 1 training step or more (got {max_steps})",
            f"leave --steps out (default {DEMO_STEPS}) or pass e.g. --steps 120",
        )
    model_dir, data = ensure_demo_assets(progress)
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
            save_steps=max(1, max_steps // 3),  # 300 steps: checkpoints 200 and 300
            save_total_limit=2,
        ),
    ).validate()
