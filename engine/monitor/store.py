"""Everything a dashboard shows about one run, read from its run directory, in bounded memory.

`MetricsStore.refresh()` tails `metrics.jsonl`, `gpu.jsonl` and `events.jsonl` by byte offset
(a partial last line waits for the next call) and re-reads `state.json`. Each metric is a
bounded `Series`, so a million-line file holds a few thousand points and keeps its spikes.

A big file is opened as a sampled history plus an exact tail (`engine.monitor.reading`), so
charts of a long history show a sample of it; the recent window, the progress, the ETA and the
alerts from the tail are exact (a NaN loss ends a run, so it is in the tail). Each alert is
reported once.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.monitor.alerts import (
    Alert,
    SpikeDetector,
    budget_alert,
    end_alert,
    nan_alert,
    oom_alert,
    spike_alert,
    stall_alert,
)
from engine.monitor.preference import PreferenceMonitor
from engine.monitor.progress import Pace, Progress
from engine.monitor.reading import JsonlSource
from engine.monitor.records import Event, GpuHistory, bad_loss, describe_event, num, step_of
from engine.monitor.series import Series
from engine.run.probe import measured_tokens_per_s
from engine.run.rundir import FINAL, RunDir, read_json, read_spec
from engine.training_config import PREFERENCE_STAGES

# Logged intervals the measured speed is taken over (the recent ones: a resumed or long run's
# speed now, not its history).
SPEED_WINDOW = 512


@dataclass(frozen=True)
class RefreshResult:
    changed: bool
    alerts: list[Alert]


class MetricsStore:
    """The live state of one run for dashboards. Not thread-safe: one thread refreshes it
    and reads it (the dashboard's worker), or the reader waits for `refresh()` to return."""

    def __init__(
        self,
        run: RunDir | Path,
        *,
        stall_seconds: float = 300.0,
        spike_factor: float = 3.0,
        spike_warmup: int = 20,
        spike_window: int = 32,
        spike_min_delta: float = 0.05,
        smoothing: float = 0.1,
        eta_skip_steps: int = 2,
        idle_util_pct: float = 5.0,
        recent_points: int = 2048,
        history_buckets: int = 1024,
        big_file_bytes: int = 16 << 20,
        tail_bytes: int = 1 << 20,
        sample_lines: int = 4096,
        max_events: int = 500,
        stage: str | None = None,
    ) -> None:
        self.run = run if isinstance(run, RunDir) else RunDir(Path(run))
        self.stall_seconds = stall_seconds
        self.smoothing = smoothing
        self.idle_util_pct = idle_util_pct
        self.big_file_bytes = big_file_bytes

        def series() -> Series:
            return Series(recent_points, history_buckets)

        def gpu_series() -> Series:
            return Series(max(64, recent_points // 4), max(32, history_buckets // 4))

        self.loss = series()
        self.loss_smooth = series()
        self.eval_loss = series()
        self.eval_perplexity = series()  # exp(eval_loss): what the eval loss means per token
        self.perplexity = series()  # pretrain: exp(smoothed loss), the training perplexity
        self.preference = PreferenceMonitor(series)  # DPO, ORPO, KTO, SimPO: TRL's rewards/*
        # The run's training stage (spec.yaml's training.stage): None until read by refresh().
        self.stage = stage
        self.lr = series()
        self.grad_norm = series()
        self.tokens_per_s = series()
        self.samples_per_s = series()
        self._gpu_series = gpu_series
        self.gpus: dict[int, GpuHistory] = {}
        self.events: deque[Event] = deque(maxlen=max_events)
        self.alerts: deque[Alert] = deque(maxlen=max_events)
        self.state: dict[str, Any] = {}
        self.plan: dict[str, Any] = {}
        self.last_metrics: dict[str, Any] = {}
        self.torch_memory: dict[str, Any] = {}
        self.lines_read = 0
        self.version = 0  # bumps whenever anything a view shows changed
        # Eval lines are few and precious: the sampled part of a big file keeps all of them.
        self._metrics = JsonlSource(self.run.metrics, tail_bytes, sample_lines, (b'"eval_',))
        # GPU lines are many and wide (one entry per GPU); sparklines need the last few.
        self._gpu = JsonlSource(self.run.gpu, tail_bytes // 4, sample_lines // 4)
        self._events = JsonlSource(self.run.events, tail_bytes // 4, 0)
        self._plan_read = False
        self._reads_after_final = 0
        self._new_alerts: list[Alert] = []
        self._seen: set[tuple[Any, ...]] = set()
        self.stalled = False  # the stall condition holds now
        # Reset by _reset_metrics() (a resume restarts the pace and the spike window).
        self._step: int | None = None
        self._first_t: float | None = None
        self._last_t: float | None = None
        self._progress_t: float | None = None
        self._ema: float | None = None
        self._spikes = SpikeDetector(spike_factor, spike_warmup, spike_window, spike_min_delta)
        self._pace = Pace(eta_skip_steps)
        # The measured speed as the trainer remembered it for later plans (or why not).
        self.speed_stored: dict[str, Any] | None = None

    # -- public ----------------------------------------------------------------------------------
    @property
    def status(self) -> str:
        return str(self.state.get("status") or "starting")

    @property
    def failure(self) -> str | None:
        failure = self.state.get("failure")
        return str(failure) if failure and self.status == "failed" else None

    @property
    def is_preference(self) -> bool:
        """A DPO-family run: by its spec, or by the rewards it logs (a spec gone missing)."""
        return self.stage in PREFERENCE_STAGES or self.preference.seen

    @property
    def live(self) -> bool:
        """Whether refresh() still reads the JSONL files (a finished run is read once)."""
        return self._reads_after_final < 2

    @property
    def retained_points(self) -> int:
        """Points held in memory by every series together (the memory bound's witness)."""
        total = sum(s.retained for s in self._all_metric_series())
        for gpu in self.gpus.values():
            total += sum(series.retained for _, series in gpu.series())
        return total

    def refresh(self, now: float | None = None) -> RefreshResult:
        """Read what is new in the run directory; returns whether anything changed and the
        alerts raised by it (each alert is raised once)."""
        now = time.time() if now is None else now
        before = self.version
        state = read_json(self.run.state)
        if state != self.state:
            self.set_state(state)
        if not self._plan_read:
            self._plan_read = True
            if not self.plan:
                self.plan = read_json(self.run.plan)
            if self.stage is None:
                self.stage = spec_stage(read_spec(self.run))
        if self.status in FINAL:
            if self._reads_after_final < 2:
                self._read_files(now)
                self._reads_after_final += 1
        else:
            self._reads_after_final = 0
            self._read_files(now)
        alerts = self.check_alerts(now)
        return RefreshResult(changed=self.version != before or bool(alerts), alerts=alerts)

    def check_alerts(self, now: float) -> list[Alert]:
        """Raise the time- and state-driven alerts, and return every alert raised since the
        last call (ingestion raises NaN and spike alerts as records arrive)."""
        self._check_stall(now)
        self._end_alerts(now)
        alerts, self._new_alerts = self._new_alerts, []
        return alerts

    def progress(self) -> Progress:
        last = self.last_metrics
        step = self._step
        max_steps = num(last.get("max_steps")) or num(self.state.get("max_steps"))
        eta = None if self.status in FINAL else self._pace.eta(step, max_steps)
        return Progress(
            step=step,
            max_steps=int(max_steps) if max_steps else None,
            epoch=num(last.get("epoch")),
            seconds_per_step=self._pace.seconds_per_step,
            eta_seconds=eta,
            tokens_seen=num(last.get("tokens_seen")),
            first_t=self._first_t,
            last_t=self._last_t,
        )

    @property
    def planned_tokens_per_s(self) -> float | None:
        """The plan's job tokens/s (what `ftui plan` promised), when the run has a plan."""
        return num(self.plan.get("tokens_per_s"))

    @property
    def measured_tokens_per_s(self) -> float | None:
        """The run's steady job tokens/s so far (median of the logged intervals after warm-up)."""
        return measured_tokens_per_s(self.tokens_per_s.tail_values(SPEED_WINDOW))

    def last_progress_t(self) -> float | None:
        """When the step last advanced (or training started, before the first step)."""
        if self._progress_t is not None:
            return self._progress_t
        return num(self.state.get("train_started_at"))

    # -- ingestion (public so tests and replays can feed records directly) ----------------------
    def add_metrics(self, record: dict[str, Any], *, now: float | None = None) -> None:
        step_value = num(record.get("step"))
        if step_value is None:
            return
        step = int(step_value)
        t = num(record.get("t"))
        self.version += 1
        self.lines_read += 1
        if self._step is not None and step < self._step:
            self._truncate(step)
        if self._first_t is None:
            self._first_t = t
        self._last_t = t if t is not None else self._last_t
        if self._step is None or step > self._step:
            # Tailing: when we saw it; reading history: when it was written.
            self._progress_t = t if now is None else now
        self._step = step
        self.last_metrics.update(record)  # eval lines lack some keys: keep the last of each
        if isinstance(record.get("mem"), dict):
            self.torch_memory = record["mem"]
        x = float(step)
        if "loss" in record:
            self._add_loss(x, record.get("loss"), t)
            self._pace.observe(step, t)
        for key, series in (
            ("lr", self.lr),
            ("grad_norm", self.grad_norm),
            ("tokens_per_s", self.tokens_per_s),
            ("samples_per_s", self.samples_per_s),
            ("eval_loss", self.eval_loss),
        ):
            value = num(record.get(key))
            if value is not None:
                series.append(x, value)
        eval_loss = num(record.get("eval_loss"))
        # exp overflows a float above ~709; a preference run's eval loss is no log-likelihood.
        if eval_loss is not None and eval_loss < 700 and not self.is_preference:
            self.eval_perplexity.append(x, math.exp(eval_loss))
        if "rewards/margins" in record or "rewards/chosen" in record:
            max_steps = num(record.get("max_steps"))
            for alert in self.preference.add(x, record, max_steps):
                self._alert(("preference", alert.kind), alert)

    def add_gpu(self, record: dict[str, Any]) -> None:
        t = num(record.get("t"))
        gpus = record.get("gpus")
        if t is None or not isinstance(gpus, list):
            return
        self.version += 1
        for sample in gpus:
            if not isinstance(sample, dict) or num(sample.get("index")) is None:
                continue
            index = int(sample["index"])
            gpu = self.gpus.get(index)
            if gpu is None:
                make = self._gpu_series
                gpu = self.gpus[index] = GpuHistory(index, make(), make(), make(), make())
            gpu.last = sample
            for key, series in gpu.series():
                value = num(sample.get(key))
                if value is not None:
                    series.append(t, value)
            used = num(sample.get("used"))
            if used is not None:
                gpu.peak_used_bytes = max(gpu.peak_used_bytes, used)
            total = num(sample.get("total"))
            if total:
                gpu.total_bytes = total

    def add_event(self, record: dict[str, Any]) -> None:
        event = describe_event(record)
        self.events.append(event)
        self.version += 1
        step = step_of(record.get("step"))
        if event.kind == "nan":
            self._nan_alert(step, event.t, record.get("loss", "NaN"))
        elif event.kind == "oom":
            self._alert(("oom", step), oom_alert(step, event.t))
        elif event.kind == "budget_projection":
            self._alert(("budget", step, event.t), budget_alert(record))
        elif event.kind == "speed_stored":  # the trainer remembered the run's speed
            self.speed_stored = {k: v for k, v in record.items() if k not in ("t", "event")}

    def set_state(self, state: dict[str, Any]) -> None:
        self.state = state
        self.version += 1
        plan = state.get("plan_summary")
        if isinstance(plan, dict) and plan:
            self.plan = plan

    # -- alerts ----------------------------------------------------------------------------------
    def _check_stall(self, now: float) -> None:
        """Stalled: running, no new step for a while and, when GPU data exists, every GPU idle."""
        self.stalled = False
        since = self.last_progress_t()
        if self.status != "running" or since is None:
            return
        idle_for = now - since
        if idle_for < self._pace.stall_threshold(self.stall_seconds):
            return
        if self.gpus:
            utils = [num(g.last.get("util")) for g in self.gpus.values()]
            known = [u for u in utils if u is not None]
            if known and max(known) >= self.idle_util_pct:
                return
        self.stalled = True
        step = self._step
        alert = stall_alert(step, idle_for, bool(self.gpus), now)
        self._alert(("stall", step, self._progress_t), alert)

    def _alert(self, key: tuple[Any, ...], alert: Alert) -> None:
        if key in self._seen:
            return
        self._seen.add(key)
        self.alerts.append(alert)
        self._new_alerts.append(alert)
        self.version += 1

    def _nan_alert(self, step: int | None, t: float | None, value: Any) -> None:
        if any(a.kind == "nan" and a.step == step for a in self.alerts):
            return
        self._alert(("nan", step), nan_alert(step, t, value))

    def _end_alerts(self, now: float | None) -> None:
        state = self.state
        status = state.get("status")
        if status not in FINAL:
            return
        key: tuple[Any, ...] = ("end", status, state.get("failure"), state.get("finished_at"))
        alert = end_alert(state, self._step, self.loss.last, self.alerts, now)
        if alert is None:  # failed on a NaN loss already reported
            self._seen.add(key)
            return
        self._alert(key, alert)

    # -- internals -------------------------------------------------------------------------------
    def _all_metric_series(self) -> list[Series]:
        return [
            self.loss,
            self.loss_smooth,
            self.eval_loss,
            self.eval_perplexity,
            self.perplexity,
            *self.preference.all_series(),
            self.lr,
            self.grad_norm,
            self.tokens_per_s,
            self.samples_per_s,
        ]

    def _reset_metrics(self) -> None:
        for series in self._all_metric_series():
            series.clear()
        self._step = self._first_t = self._last_t = self._progress_t = self._ema = None
        self.last_metrics = {}
        self._pace.reset()
        self._spikes.reset()
        self.preference.clear()

    def _truncate(self, step: int) -> None:
        """A resumed run logs from an earlier step: the abandoned attempt's points go, this
        step's too (its new record is arriving)."""
        cut = float(step - 1)
        for series in self._all_metric_series():
            series.truncate_after(cut)
        last = self.loss_smooth.last
        self._ema = last[1] if last else None
        self._spikes.restart()
        self._pace.reset()
        self.preference.truncate_after(cut)

    def _add_loss(self, x: float, value: Any, t: float | None) -> None:
        if bad_loss(value):
            self._nan_alert(int(x), t, value)
            return
        loss = num(value)
        if loss is None:
            return
        self.loss.append(x, loss)
        self._ema = loss if self._ema is None else self._ema + self.smoothing * (loss - self._ema)
        self.loss_smooth.append(x, self._ema)
        if self.stage == "pretrain" and self._ema < 700:
            self.perplexity.append(x, math.exp(self._ema))
        median = self._spikes.check(loss)
        if median is not None:
            self._alert(("spike", int(x)), spike_alert(int(x), loss, median, t))

    def _read_files(self, now: float) -> None:
        big = self.big_file_bytes
        restarted, records = self._metrics.poll(big)
        if restarted:
            self._reset_metrics()
            self.version += 1
        # The first read of a file is history: its own timestamps say when steps happened.
        stamp = None if restarted else now
        for record in records:
            self.add_metrics(record, now=stamp)
        restarted, records = self._gpu.poll(big)
        if restarted and self.gpus:
            self.gpus.clear()
            self.version += 1
        for record in records:
            self.add_gpu(record)
        restarted, records = self._events.poll(big)
        if restarted and self.events:
            self.events.clear()
        for record in records:
            self.add_event(record)


def spec_stage(spec: dict[str, Any]) -> str:
    """The training stage of a spec.yaml as plain data: `training.stage`, or the top-level
    `mode` of runs written before stages; "sft" when it names none."""
    training = spec.get("training")
    stage = training.get("stage") if isinstance(training, dict) else None
    stage = stage or spec.get("mode")
    return stage if isinstance(stage, str) and stage else "sft"
