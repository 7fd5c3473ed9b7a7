"""What the dashboard's store keeps for each training stage: a preference run's rewards and its
margin and accuracy alerts, a pretrain run's perplexity. Runs are folders written here with
the records TRL's trainers log through ftui's callback (keys as in metrics.jsonl)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest

from engine.monitor.alerts import Alert
from engine.monitor.preference import STUCK_BAND, WARMUP_LOGS, WINDOW
from engine.monitor.store import MetricsStore

T0 = 1_700_000_000.0


def dpo_line(step: int, margin: float, accuracy: float | None, steps: int = 200) -> dict[str, Any]:
    """One logged DPO step as the callback writes it (rewards are beta-scaled log-ratios)."""
    chosen = margin / 3
    record = {
        "t": T0 + step,
        "step": step,
        "epoch": step / steps,
        "loss": math.log1p(math.exp(-margin)),  # -log sigmoid(margin)
        "lr": 5e-6,
        "grad_norm": 3.0,
        "rewards/chosen": chosen,
        "rewards/rejected": chosen - margin,
        "rewards/margins": margin,
        "logps/chosen": -40.0 + chosen,
        "logps/rejected": -45.0,
        "tokens_seen": step * 1024.0,
        "max_steps": steps,
    }
    if accuracy is not None:
        record["rewards/accuracies"] = accuracy
    return record


def write_run(tmp_path: Path, stage: str, records: list[dict[str, Any]], **spec: Any) -> Path:
    run = tmp_path / f"{stage}-run"
    run.mkdir(parents=True)
    state = {"status": "completed", "created_at": T0, "finished_at": T0 + 1000}
    (run / "state.json").write_text(json.dumps(state))
    training = "" if "mode" in spec else f"training:\n  stage: {stage}\n"
    extra = "".join(f"{k}: {v}\n" for k, v in spec.items())
    (run / "spec.yaml").write_text(f"model: tiny\ndata: d.jsonl\n{training}{extra}")
    with (run / "metrics.jsonl").open("w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    return run


PREFERENCE_KINDS = ("margin_collapse", "margin_negative", "accuracy_stuck")


def read(run: Path) -> tuple[MetricsStore, list[str]]:
    """The store after reading the run once, and the preference alerts it raised."""
    store = MetricsStore(run)
    alerts = store.refresh(now=T0 + 1000).alerts
    return store, [a.kind for a in alerts if a.kind in PREFERENCE_KINDS]


def raised(store: MetricsStore, kind: str) -> Alert:
    return next(a for a in store.alerts if a.kind == kind)


def learning(step: int) -> tuple[float, float]:
    """A DPO run that learns: the margin grows to ~2, accuracy from 0 (ties at step 0) to 1."""
    return 2.0 * (1 - math.exp(-step / 40)), min(1.0, 0.5 + step / 80)


# -- a preference run ------------------------------------------------------------------------
def test_a_learning_dpo_run_keeps_its_rewards_and_raises_nothing(tmp_path: Path) -> None:
    records = [dpo_line(s, *learning(s)) for s in range(1, 201)]
    records.append({"t": T0 + 201, "step": 200, "eval_loss": 0.3, "eval_rewards/margins": 1.9})
    store, kinds = read(write_run(tmp_path, "dpo", records))
    assert store.stage == "dpo" and store.is_preference
    pref = store.preference
    assert pref.chosen.last == (200.0, records[199]["rewards/chosen"])
    assert pref.rejected.last == (200.0, records[199]["rewards/rejected"])
    assert pref.margin.last == (200.0, records[199]["rewards/margins"])
    assert pref.recent_accuracy == 1.0
    assert len(pref.chosen.xy()[0]) == 200
    assert store.eval_perplexity.last is None  # exp(DPO loss) is no perplexity
    assert store.perplexity.last is None
    assert kinds == []


def test_the_margin_collapsing_after_it_grew_raises_one_alert(tmp_path: Path) -> None:
    # Grows to 2, holds, then falls back to ~0.1 from step 120 (a too-high learning rate).
    margins = [learning(s)[0] if s < 120 else 0.1 for s in range(1, 201)]
    records = [dpo_line(s, m, 0.9) for s, m in enumerate(margins, start=1)]
    store, kinds = read(write_run(tmp_path, "dpo", records))
    assert kinds == ["margin_collapse"]
    alert = raised(store, "margin_collapse")
    assert alert.severity == "warning" and "collapsed" in alert.message
    # The window mean reaches a fifth of the ~1.9 peak some steps after the fall, not before.
    assert alert.step is not None and 120 < alert.step < 120 + WINDOW


def test_a_margin_that_never_grew_does_not_collapse(tmp_path: Path) -> None:
    # beta 0.01: the margin rises to 0.3 and drifts back to 0.05, below MARGIN_GROWN all along.
    margins = [0.3 * math.sin(math.pi * s / 200) + 0.05 for s in range(1, 201)]
    records = [dpo_line(s, m, 0.8) for s, m in enumerate(margins, start=1)]
    assert read(write_run(tmp_path, "dpo", records))[1] == []


def test_a_margin_negative_over_a_window_alerts_but_noise_around_zero_does_not(
    tmp_path: Path,
) -> None:
    rng = random.Random(3)
    noisy = [dpo_line(s, rng.uniform(-0.1, 0.1), 0.8) for s in range(1, 201)]
    assert "margin_negative" not in read(write_run(tmp_path / "a", "dpo", noisy))[1]
    # Swapped columns: the policy learns to prefer "rejected" from the start.
    swapped = [dpo_line(s, -learning(s)[0], 0.8) for s in range(1, 201)]
    store, kinds = read(write_run(tmp_path / "b", "dpo", swapped))
    assert kinds == ["margin_negative"]
    # Not during the warm-up: the first WARMUP_LOGS logs and the first 10% of the steps.
    assert raised(store, "margin_negative").step == max(WARMUP_LOGS, 20)


@pytest.mark.parametrize("steps", [200, 1000])
def test_accuracy_stuck_at_a_coin_after_warm_up(tmp_path: Path, steps: int) -> None:
    rng = random.Random(7)
    # Batches of 8 pairs: each logged accuracy is a multiple of 1/8 around 0.5.
    records = [
        dpo_line(s, rng.uniform(-0.05, 0.05), rng.randint(2, 6) / 8, steps) for s in range(1, 151)
    ]
    store, kinds = read(write_run(tmp_path, "dpo", records))
    assert "accuracy_stuck" in kinds
    alert = raised(store, "accuracy_stuck")
    assert "stuck at 0." in alert.message
    assert alert.step == max(WARMUP_LOGS, steps // 10)  # at the end of the warm-up, once
    assert abs((store.preference.recent_accuracy or 0) - 0.5) <= STUCK_BAND


def test_accuracy_that_climbs_slowly_is_not_stuck(tmp_path: Path) -> None:
    # A real low-lr run: 0.5 for a while, 0.75 after 100 steps (out of 1000).
    records = [dpo_line(s, 0.01 * s, min(0.8, 0.5 + s / 400), 1000) for s in range(1, 301)]
    assert "accuracy_stuck" not in read(write_run(tmp_path, "dpo", records))[1]


def test_kto_logs_no_accuracy_and_still_charts_its_rewards(tmp_path: Path) -> None:
    records = [dpo_line(s, *learning(s)) for s in range(1, 101)]
    for r in records:
        del r["rewards/accuracies"]
        r["kl"] = 0.0
    store, kinds = read(write_run(tmp_path, "kto", records))
    assert store.is_preference and store.preference.recent_accuracy is None
    assert store.preference.margin.last is not None and kinds == []


def test_rewards_mark_a_preference_run_without_a_spec(tmp_path: Path) -> None:
    run = write_run(tmp_path, "dpo", [dpo_line(s, *learning(s)) for s in range(1, 11)])
    (run / "spec.yaml").unlink()
    store, _ = read(run)
    assert store.stage == "sft" and store.is_preference


def test_a_resumed_preference_run_drops_the_abandoned_rewards(tmp_path: Path) -> None:
    store = MetricsStore(tmp_path, stage="dpo")
    for step in range(1, 41):
        store.add_metrics(dpo_line(step, 2.0, 1.0))
    for step in range(21, 31):  # resumed from checkpoint 20
        store.add_metrics(dpo_line(step, 1.0, 1.0))
    xs, ys = store.preference.margin.xy()
    assert xs[-1] == 30.0 and all(y == 1.0 for x, y in zip(xs, ys, strict=True) if x > 20)


# -- pretrain --------------------------------------------------------------------------------
def loss_line(step: int, loss: float) -> dict[str, Any]:
    return {"t": T0 + step, "step": step, "loss": loss, "lr": 1e-3, "max_steps": 100}


def test_pretrain_keeps_the_training_perplexity(tmp_path: Path) -> None:
    records = [loss_line(s, 6.3 - 0.02 * s) for s in range(1, 101)]
    store, _ = read(write_run(tmp_path, "pretrain", records))
    assert store.stage == "pretrain" and not store.is_preference
    last = store.perplexity.last
    smooth = store.loss_smooth.last
    assert last is not None and smooth is not None
    assert last[0] == 100.0 and last[1] == pytest.approx(math.exp(smooth[1]))
    assert 80 < last[1] < 150  # exp(~4.5): the smoothed loss lags the last one (4.3)


def test_a_run_written_with_mode_pretrain_is_pretrain(tmp_path: Path) -> None:
    records = [loss_line(s, 3.0) for s in range(1, 11)]
    store, _ = read(write_run(tmp_path, "pretrain", records, mode="pretrain"))
    assert store.stage == "pretrain"
    last = store.perplexity.last
    assert last is not None and last[0] == 10.0 and last[1] == pytest.approx(math.exp(3.0))


def test_sft_has_no_training_perplexity(tmp_path: Path) -> None:
    store, _ = read(write_run(tmp_path, "sft", [loss_line(s, 2.0) for s in range(1, 11)]))
    assert store.stage == "sft" and store.perplexity.last is None
    assert not store.is_preference
