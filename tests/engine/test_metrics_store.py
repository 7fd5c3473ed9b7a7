"""MetricsStore: downsampling, bounded memory, resume handling, big files and every alert."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest

from engine.monitor.reading import TextTail, sample_jsonl
from engine.monitor.series import Series, lttb
from engine.monitor.store import MetricsStore

T0 = 1_700_000_000.0


def line(step: int, loss: float | None = 1.0, **extra: Any) -> dict[str, Any]:
    return {"t": T0 + step, "step": step, "loss": loss, "lr": 1e-4, "max_steps": 1000, **extra}


def write_jsonl(path: Path, records: list[dict[str, Any]], mode: str = "w") -> None:
    with path.open(mode, encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)


def make_run(tmp_path: Path, status: str = "running", **state: Any) -> Path:
    run = tmp_path / "run-1"
    run.mkdir()
    (run / "state.json").write_text(json.dumps({"status": status, "created_at": T0, **state}))
    return run


# -- lttb ------------------------------------------------------------------------------------
def test_lttb_keeps_endpoints_count_and_extremes() -> None:
    rng = random.Random(1)
    xs = [float(i) for i in range(10_000)]
    ys = [math.sin(i / 300) + rng.random() * 0.1 for i in range(10_000)]
    ys[3_333], ys[7_777] = 25.0, -25.0  # one spike, one dip
    out_x, out_y = lttb(xs, ys, 200)
    assert len(out_x) == len(out_y) == 200
    assert (out_x[0], out_y[0]) == (xs[0], ys[0])
    assert (out_x[-1], out_y[-1]) == (xs[-1], ys[-1])
    assert max(out_y) == 25.0 and min(out_y) == -25.0
    assert out_x == sorted(out_x)


def test_lttb_small_inputs_pass_through() -> None:
    assert lttb([1.0, 2.0], [3.0, 4.0], 10) == ([1.0, 2.0], [3.0, 4.0])
    assert lttb([1.0, 2.0, 3.0], [1.0, 5.0, 2.0], 2) == ([1.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        lttb([1.0], [1.0, 2.0], 5)


# -- bounded series --------------------------------------------------------------------------
def test_series_is_bounded_and_keeps_extremes_of_old_history() -> None:
    series = Series(recent=100, buckets=50)
    for i in range(100_000):
        series.append(float(i), 9.0 if i == 12_345 else float(i % 7))
    assert series.retained <= 100 + 2 * 50 + 2
    xs, ys = series.xy()
    assert xs == sorted(xs) and xs[-1] == 99_999.0
    assert xs[-100:] == [float(i) for i in range(99_900, 100_000)]  # recent: full resolution
    assert 9.0 in ys  # the spike deep in history survived the decimation


def test_store_memory_is_bounded_with_a_million_lines(tmp_path: Path) -> None:
    store = MetricsStore(make_run(tmp_path), recent_points=512, history_buckets=256)
    for step in range(1, 1_000_001):
        store.add_metrics({"step": step, "loss": 1.0 + (step % 10) / 10, "lr": 1e-4})
    # loss, smoothed loss, lr: each holds recent + 2 points per bucket at most.
    assert store.retained_points <= 3 * (512 + 2 * 256 + 2)
    assert store.progress().step == 1_000_000
    assert store.loss.last == (1_000_000.0, 1.0)


# -- resume ----------------------------------------------------------------------------------
def test_steps_going_back_drop_the_abandoned_attempt(tmp_path: Path) -> None:
    store = MetricsStore(make_run(tmp_path), recent_points=8, history_buckets=4)
    for step in range(1, 41):
        store.add_metrics(line(step, loss=2.0))
    for step in range(21, 31):  # resumed from checkpoint 20, logged again
        store.add_metrics(line(step, loss=1.0))
    xs, ys = store.loss.xy()
    assert xs == sorted(xs) and xs[-1] == 30.0
    assert all(y == 1.0 for x, y in zip(xs, ys, strict=True) if x > 20)
    assert store.progress().step == 30


def test_a_rewritten_metrics_file_is_read_again(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    write_jsonl(run / "metrics.jsonl", [line(s, loss=3.0) for s in range(1, 51)])
    store = MetricsStore(run)
    store.refresh(now=T0 + 60)
    # The callback's resume truncation replaces the file (new inode) with steps <= 30.
    tmp = run / "metrics.tmp"
    write_jsonl(tmp, [line(s, loss=3.0) for s in range(1, 31)] + [line(31, loss=0.5)])
    tmp.replace(run / "metrics.jsonl")
    store.refresh(now=T0 + 70)
    assert store.loss.xy()[0] == [float(s) for s in range(1, 32)]
    assert store.loss.last == (31.0, 0.5)


# -- tailing ---------------------------------------------------------------------------------
def test_partial_last_line_waits_for_its_end(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    path = run / "metrics.jsonl"
    write_jsonl(path, [line(1), line(2)])
    with path.open("a") as fh:
        fh.write(json.dumps(line(3, loss=0.25))[:20])
    store = MetricsStore(run)
    store.refresh(now=T0)
    assert store.progress().step == 2
    with path.open("a") as fh:
        fh.write(json.dumps(line(3, loss=0.25))[20:] + "\n")
    store.refresh(now=T0 + 1)
    assert store.loss.last == (3.0, 0.25)


def test_big_file_opens_as_sampled_history_plus_exact_tail(tmp_path: Path) -> None:
    run = make_run(tmp_path, status="completed")
    records = []
    for s in range(1, 20_001):
        records.append(line(s, loss=2.0 - s / 20_000))
        if s % 1000 == 0:
            records.append({"t": T0 + s, "step": s, "eval_loss": 1.5})
    write_jsonl(run / "metrics.jsonl", records)
    store = MetricsStore(run, big_file_bytes=200_000, tail_bytes=50_000, sample_lines=500)
    store.refresh(now=T0)
    assert store.lines_read < 3_000  # not 21,000
    xs, _ = store.loss.xy()
    assert xs[0] < 100 and xs[-1] == 20_000.0
    assert len(store.eval_loss.xy()[0]) == 20  # every eval line, even in the sampled part
    assert store.progress().step == 20_000


def test_sample_jsonl_returns_lines_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    write_jsonl(path, [line(s) for s in range(1, 5001)])
    picked = list(sample_jsonl(path, 0, path.stat().st_size, 100, chunk_bytes=4096))
    steps = [r["step"] for r in picked]
    assert steps == sorted(steps) and 90 <= len(steps) <= 110


def test_text_tail_keeps_the_last_state_of_progress_bars(tmp_path: Path) -> None:
    path = tmp_path / "stdout.log"
    path.write_text("a\n 10%|█ | 1/10\r 20%|██ | 2/10\nhalf")
    tail = TextTail(path)
    assert tail.read() == (True, ["a", " 20%|██ | 2/10"])
    with path.open("a") as fh:
        fh.write(" a line\n")
    assert tail.read() == (False, ["half a line"])


# -- alerts ----------------------------------------------------------------------------------
def kinds(store: MetricsStore, now: float = T0) -> list[str]:
    return [a.kind for a in store.check_alerts(now)]


def test_nan_loss_alerts_once(tmp_path: Path) -> None:
    store = MetricsStore(make_run(tmp_path))
    store.add_metrics(line(1, loss=1.0))
    store.add_metrics(line(2, loss=None))  # the callback writes NaN as null
    store.add_event({"t": T0 + 2, "event": "nan", "step": 2.0, "loss": "nan"})  # 2.0 is step 2
    alerts = store.check_alerts(T0 + 2)
    assert [a.kind for a in alerts] == ["nan"] and alerts[0].step == 2
    assert kinds(store, T0 + 3) == []  # no repeats on the next refresh
    store.add_metrics(line(3, loss=float("inf")))
    assert kinds(store, T0 + 4) == ["nan"]


def test_loss_spike_after_warmup(tmp_path: Path) -> None:
    store = MetricsStore(make_run(tmp_path))
    store.add_metrics(line(1, loss=50.0))  # high early losses are warm-up, not spikes
    for step in range(2, 60):
        store.add_metrics(line(step, loss=1.0 + (step % 3) * 0.01))
    assert kinds(store) == []
    store.add_metrics(line(60, loss=4.0))
    alerts = store.check_alerts(T0)
    assert [a.kind for a in alerts] == ["spike"] and alerts[0].step == 60
    store.add_metrics(line(61, loss=4.5))  # the same episode: quiet
    assert kinds(store) == []


def test_loss_spikes_are_still_caught_after_a_resume(tmp_path: Path) -> None:
    store = MetricsStore(make_run(tmp_path))
    for step in range(1, 400):
        store.add_metrics(line(step, loss=1.0 + (step % 3) * 0.01))
    store.add_metrics(line(400, loss=4.0))
    assert kinds(store) == ["spike"]
    for step in range(401, 500):
        store.add_metrics(line(step, loss=1.0 + (step % 3) * 0.01))
    store.add_metrics(line(300, loss=1.0))  # resumed from the checkpoint at step 300
    for step in range(301, 360):
        store.add_metrics(line(step, loss=1.0 + (step % 3) * 0.01))
    assert kinds(store) == []
    store.add_metrics(line(360, loss=4.0))  # a new spike after the resume's warm-up
    assert kinds(store) == ["spike"]


def test_stall_needs_time_and_idle_gpus(tmp_path: Path) -> None:
    store = MetricsStore(make_run(tmp_path), stall_seconds=60)
    store.set_state({"status": "running"})
    store.add_metrics(line(1), now=T0)
    store.add_metrics(line(2), now=T0 + 1)
    busy = {"index": 0, "used": 1, "total": 2, "util": 97.0, "temp": 60, "power": 300}
    store.add_gpu({"t": T0 + 1, "gpus": [busy]})
    assert kinds(store, T0 + 30) == []
    assert kinds(store, T0 + 600) == []  # no new step, but the GPU works (eval, saving)
    store.add_gpu({"t": T0 + 600, "gpus": [{**busy, "util": 0.0}]})
    alerts = store.check_alerts(T0 + 601)
    assert [a.kind for a in alerts] == ["stall"] and store.stalled
    assert kinds(store, T0 + 700) == []  # once per stall
    store.add_metrics(line(3), now=T0 + 701)
    assert kinds(store, T0 + 702) == [] and not store.stalled
    assert kinds(store, T0 + 800) == ["stall"]  # a new stall at step 3


def test_stall_without_gpu_data_and_only_while_running(tmp_path: Path) -> None:
    run = make_run(tmp_path, train_started_at=T0)
    store = MetricsStore(run, stall_seconds=10)
    store.refresh(now=T0 + 5)
    assert store.check_alerts(T0 + 5) == []
    alerts = store.refresh(now=T0 + 20).alerts
    assert [a.kind for a in alerts] == ["stall"] and "before the first step" in alerts[0].message
    (run / "state.json").write_text(json.dumps({"status": "stopping", "created_at": T0}))
    store2 = MetricsStore(run, stall_seconds=10)
    assert store2.refresh(now=T0 + 100).alerts == []


@pytest.mark.parametrize(
    ("state", "kind", "words"),
    [
        (
            {"status": "failed", "failure": "oom", "note": "ran out of GPU memory (plan 58)"},
            "oom",
            "plan 58",
        ),
        (
            {"status": "failed", "failure": "killed", "note": "the run's processes died"},
            "died",
            "died",
        ),
        ({"status": "failed", "failure": "error", "exit_code": 1}, "failed", "exit code 1"),
        ({"status": "failed", "failure": "nan"}, "nan", "NaN"),
        ({"status": "completed"}, "completed", "final loss 0.5"),
        ({"status": "stopped"}, "stopped", "stopped at step 10"),
    ],
)
def test_end_of_run_alerts(tmp_path: Path, state: dict[str, Any], kind: str, words: str) -> None:
    run = make_run(tmp_path, **state)
    write_jsonl(run / "metrics.jsonl", [line(s, loss=0.5) for s in range(1, 11)])
    store = MetricsStore(run)
    alerts = store.refresh(now=T0 + 100).alerts
    assert [a.kind for a in alerts] == [kind]
    assert words in alerts[0].message
    assert store.refresh(now=T0 + 101).alerts == []


def test_finished_run_is_read_once_then_only_state(tmp_path: Path) -> None:
    run = make_run(tmp_path, status="completed")
    write_jsonl(run / "metrics.jsonl", [line(s) for s in range(1, 11)])
    store = MetricsStore(run)
    store.refresh(now=T0)
    store.refresh(now=T0 + 1)
    assert not store.live
    write_jsonl(run / "metrics.jsonl", [line(11)], mode="a")
    assert store.refresh(now=T0 + 2).changed is False
    assert store.progress().step == 10
    # Resumed: state leaves the final statuses and the files are tailed again.
    (run / "state.json").write_text(json.dumps({"status": "running", "created_at": T0}))
    store.refresh(now=T0 + 3)
    assert store.live and store.progress().step == 11


def test_eta_from_seconds_per_step_skips_the_first_steps(tmp_path: Path) -> None:
    store = MetricsStore(make_run(tmp_path), eta_skip_steps=2)
    t = T0
    for step in range(1, 30):
        t += 60.0 if step <= 3 else 2.0  # slow start (compile, warm-up), then 2 s/step
        store.add_metrics({"t": t, "step": step, "loss": 1.0, "max_steps": 129})
    progress = store.progress()
    assert progress.seconds_per_step is not None
    assert 2.0 <= progress.seconds_per_step < 8.0
    assert progress.eta_seconds == pytest.approx(100 * progress.seconds_per_step)
    assert progress.fraction == pytest.approx(29 / 129)
