"""`ftui demo` on a new machine builds its tiny model first: the pre-training reports progress."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.demo.tiny import build_tiny_model
from tui.cli.runs import print_pretrain_progress


def test_the_tiny_model_reports_each_pre_training_step(tmp_path: Path) -> None:
    seen: list[tuple[int, int, float]] = []
    build_tiny_model(tmp_path / "model", pretrain_steps=3, progress=lambda *a: seen.append(a))
    assert [(step, steps) for step, steps, _ in seen] == [(1, 3), (2, 3), (3, 3)]
    assert all(loss > 0 for _, _, loss in seen)
    assert (tmp_path / "model" / "model.safetensors").exists()


def test_the_demo_prints_a_line_every_tenth_of_the_way(capsys: pytest.CaptureFixture[str]) -> None:
    for step in range(1, 401):
        print_pretrain_progress(step, 400, 1.0 / step)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 10
    assert lines[0] == "  pre-training the tiny model: step 40/400, loss 0.025"
    assert lines[-1].startswith("  pre-training the tiny model: step 400/400")
