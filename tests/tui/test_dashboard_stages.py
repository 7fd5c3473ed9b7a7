"""The dashboard of each training stage, driven with Pilot on run folders written here: a DPO
run's rewards, margin and accuracy (and its alert), a pretrain run's perplexity."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from textual.widgets import Static

from engine.run.rundir import RunDir
from tests.tui.test_dashboard import DashApp, label_text, loaded, wait_until, write_run
from tests.tui.test_dashboard import _settle as settle
from tui.screens.dashboard.events import EventList
from tui.widgets.chart import BrailleChart

T0 = 1_700_000_000.0
STEPS = 200


def dpo_line(step: int, collapse_at: int | None) -> dict[str, Any]:
    """A DPO step as the callback writes it: the margin grows to ~2 and, from `collapse_at`,
    falls back to 0.1 (a learning rate too high)."""
    margin = 2.0 * (1 - math.exp(-step / 30))
    if collapse_at is not None and step >= collapse_at:
        margin = 0.1
    chosen = -0.2 - step / 400
    return {
        "t": T0 + 30 + step * 2,
        "step": step,
        "epoch": step / STEPS,
        "loss": math.log1p(math.exp(-margin)),
        "grad_norm": 2.0 + (step % 5) / 10,
        "lr": 5e-6 * (1 - step / STEPS),
        "rewards/chosen": chosen,
        "rewards/rejected": chosen - margin,
        "rewards/accuracies": min(1.0, 0.5 + step / 60) if margin > 0.5 else 0.625,
        "rewards/margins": margin,
        "logps/chosen": -35.0,
        "logps/rejected": -40.0,
        "tokens_seen": step * 2048.0,
        "tokens_per_s": 900.0 + (step * 37) % 100,
        "samples_per_s": 4.0,
        "max_steps": STEPS,
    }


def write_stage_run(
    tmp_path: Path, stage: str, records: list[dict[str, Any]], gpus: int = 2
) -> RunDir:
    run = write_run(tmp_path, status="completed", steps=STEPS, gpus=gpus, evals=False)
    run.metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    device = "" if gpus else "device: cpu\n"
    run.spec.write_text(f"model: tiny\ndata: d.jsonl\n{device}training:\n  stage: {stage}\n")
    return run


def write_dpo_run(tmp_path: Path, collapse_at: int | None = 150) -> RunDir:
    return write_stage_run(tmp_path, "dpo", [dpo_line(s, collapse_at) for s in range(1, 201)])


def drawn(chart: BrailleChart) -> str:
    return "".join(strip.text for strip in chart.draw(*chart.content_size))


async def test_a_dpo_run_charts_chosen_against_rejected_and_alerts_the_collapse(
    tmp_path: Path,
) -> None:
    run = write_dpo_run(tmp_path)
    app = DashApp(run, refresh_seconds=0.05)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await loaded(pilot)
        await wait_until(pilot, lambda: screen.settled)
        rewards = screen.query_one("#dash-rewards", BrailleChart)
        assert rewards.display and rewards.border_title == "rewards"
        chosen, rejected = rewards.data.layers
        last = dpo_line(200, 150)
        assert (chosen.xs[-1], chosen.ys[-1]) == (200.0, last["rewards/chosen"])
        assert (rejected.xs[-1], rejected.ys[-1]) == (200.0, last["rewards/rejected"])
        assert "no data" not in drawn(rewards) and "too small" not in drawn(rewards)
        margin = screen.query_one("#dash-margin", BrailleChart)
        assert margin.display and margin.data.layers[0].ys[-1] == 0.1
        assert margin.border_subtitle == "accuracy 0.62"  # the mean of the last 20 logs
        assert not screen.query_one("#dash-lr").display  # the learning rate's place
        assert not screen.query_one("#dash-ppl").display  # exp(DPO loss) is no perplexity
        metrics = str(screen.query_one("#dash-metrics", Static).render())
        assert "accuracy 0.62" in metrics and "margin 0.1" in metrics
        alerts = [(s, m) for s, m in screen.notes if "margin collapsed" in m]
        assert len(alerts) == 1 and alerts[0][0] == "warning"
        rows = [r for r in screen.query_one(EventList).rows if r.alert]
        assert any("margin collapsed" in r.text and r.severity == "warning" for r in rows)


async def test_a_healthy_dpo_run_raises_no_preference_alert(tmp_path: Path) -> None:
    app = DashApp(write_dpo_run(tmp_path, collapse_at=None), refresh_seconds=0.05)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await loaded(pilot, polls=2)
        assert screen.frame is not None and screen.frame.accuracy == 1.0
        warnings = [m for s, m in screen.notes if s == "warning"]
        assert warnings == []


async def test_a_pretrain_run_shows_its_perplexity(tmp_path: Path) -> None:
    records = [
        {**dpo_line(s, None), "loss": 6.3 - 0.01 * s}
        for s in range(1, 201)  # the same cadence, no rewards: what a pretrain run logs
    ]
    for r in records:
        for key in [k for k in r if k.startswith(("rewards/", "logps/"))]:
            del r[key]
    app = DashApp(write_stage_run(tmp_path, "pretrain", records, gpus=0), refresh_seconds=0.05)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await loaded(pilot)
        await wait_until(pilot, lambda: screen.settled)
        ppl = screen.query_one("#dash-ppl", BrailleChart)
        assert ppl.display and ppl.border_title == "perplexity"
        assert 60 < ppl.data.layers[0].ys[-1] < 120  # exp of the smoothed loss (~4.4)
        assert "no data" not in drawn(ppl) and "too small" not in drawn(ppl)
        assert screen.query_one("#dash-lr").display
        assert not screen.query_one("#dash-rewards").display
        metrics = str(screen.query_one("#dash-metrics", Static).render())
        assert "perplexity" in metrics
        assert "· CPU" in label_text(screen, "#dash-model")


# -- snapshots -------------------------------------------------------------------------------
def test_snapshot_dpo_run_80x24(snap_compare: Any, tmp_path: Path) -> None:
    app = DashApp(write_dpo_run(tmp_path), refresh_seconds=0.05)
    assert snap_compare(app, terminal_size=(80, 24), run_before=settle)
