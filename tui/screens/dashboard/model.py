"""What the dashboard shows, as plain data: built off the UI thread from a `MetricsStore`,
posted in one message, applied to the widgets on the UI thread.

Times shown are derived from the run's own timestamps (elapsed since the run was created),
never from the wall clock, except the age of the last step of a live run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.machine.hardware import GIB
from engine.monitor.alerts import Alert
from engine.monitor.series import Series, lttb
from engine.monitor.store import MetricsStore
from tui.widgets.chart_data import ChartData, ChartLayer


@dataclass(frozen=True)
class GpuView:
    index: int
    name: str | None
    used_gib: float | None
    total_gib: float | None
    peak_gib: float
    plan_gib: float | None
    util: float | None
    temp: float | None
    power: float | None
    util_hist: list[float]
    temp_hist: list[float]
    power_hist: list[float]


@dataclass(frozen=True)
class EventRow:
    when: str
    text: str
    severity: str  # info, warning, error (alerts: warning or error)
    alert: bool = False


@dataclass(frozen=True)
class DashFrame:
    run_id: str
    status: str
    failure: str | None
    stalled: bool
    live: bool
    model: str
    method: str
    num_gpus: int
    host: str | None
    step: int | None
    max_steps: int | None
    epoch: float | None
    eta_seconds: float | None
    seconds_per_step: float | None
    train_seconds: float | None
    last_step_age: float | None
    loss: float | None
    loss_smooth: float | None
    eval_loss: float | None
    lr: float | None
    grad_norm: float | None
    tokens_per_s: float | None
    planned_tokens_per_s: float | None  # what the plan promised (job total)
    measured_tokens_per_s: float | None  # the run's steady rate so far (job total)
    samples_per_s: float | None
    tokens_seen: float | None
    tokens_hist: list[float]
    loss_chart: ChartData
    lr_chart: ChartData
    perplexity_chart: ChartData  # eval perplexity; pretrain: training's too; else may be empty
    gpus: list[GpuView]
    plan_device_gib: float | None
    plan_allocated_gib: float | None
    torch_peak_gib: float | None
    events: list[EventRow]
    alerts: list[Alert] = field(default_factory=list)
    stage: str = "sft"
    preference: bool = False  # DPO, ORPO, KTO, SimPO: the reward charts replace the LR's
    perplexity: float | None = None  # pretrain: exp(smoothed loss)
    chosen: float | None = None  # the last rewards/chosen, rewards/rejected, rewards/margins
    rejected: float | None = None
    margin: float | None = None
    accuracy: float | None = None  # the mean of the recent rewards/accuracies (the alert's)
    rewards_chart: ChartData = field(default_factory=lambda: ChartData([], -1))
    margin_chart: ChartData = field(default_factory=lambda: ChartData([], -1))


def _last(series: Series) -> float | None:
    point = series.last
    return point[1] if point else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _chart(
    parts: list[tuple[Series, str, str, int]], version: int, empty_text: str = "no data yet"
) -> ChartData:
    layers = []
    for series, kind, component, points in parts:
        xs, ys = series.xy()
        if xs:
            xs, ys = lttb(xs, ys, max(3, points))
            layers.append(ChartLayer(xs, ys, kind, component))
    return ChartData(layers, version, empty_text)


def elapsed(t: float | None, origin: float | None) -> str:
    """`+1:02:03` since the run was created (deterministic: it comes from the run's files)."""
    if t is None or origin is None:
        return "       "
    seconds = max(0, int(t - origin))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"+{hours}:{minutes:02d}:{seconds:02d}"


def build_frame(
    store: MetricsStore,
    *,
    now: float,
    alerts: list[Alert],
    chart_width: int,
    spark_width: int,
    gpu_names: dict[int, str],
    max_events: int = 60,
) -> DashFrame:
    """Every number and series the dashboard shows, downsampled to ~2× the chart width."""
    state = store.state
    progress = store.progress()
    width = max(10, chart_width)
    version = store.loss.version + store.eval_loss.version * 7 + width * 1_000_003
    loss_chart = _chart(
        [
            (store.loss, "points", "chart--points", 2 * width),
            (store.loss_smooth, "line", "chart--line", width),
            (store.eval_loss, "markers", "chart--marker", width // 2),
        ],
        version,
    )
    lr_chart = _chart(
        [(store.lr, "line", "chart--line", 2 * width)],
        store.lr.version + width * 1_000_003,
    )
    # Eval perplexity alone is a line; beside training's (pretrain) it is markers, as on the loss.
    eval_kind = ("markers", "chart--marker") if store.perplexity else ("line", "chart--line")
    perplexity_chart = _chart(
        [
            (store.perplexity, "line", "chart--line", 2 * width),
            (store.eval_perplexity, *eval_kind, 2 * width),
        ],
        store.eval_perplexity.version + store.perplexity.version * 7 + width * 1_000_003,
    )
    pref = store.preference
    rewards_chart = _chart(
        [
            (pref.chosen, "line", "chart--run-2", 2 * width),
            (pref.rejected, "line", "chart--run-3", 2 * width),
        ],
        pref.chosen.version + pref.rejected.version * 7 + width * 1_000_003,
    )
    margin_chart = _chart(
        [(pref.margin, "line", "chart--line", 2 * width)],
        pref.margin.version + width * 1_000_003,
    )
    plan = store.plan
    plan_device = _number(plan.get("device_gib"))
    gpus = [
        GpuView(
            index=gpu.index,
            name=gpu_names.get(gpu.index),
            used_gib=None if (u := _last(gpu.used)) is None else u / GIB,
            total_gib=gpu.total_bytes / GIB if gpu.total_bytes else None,
            peak_gib=gpu.peak_used_bytes / GIB,
            plan_gib=plan_device,
            util=_number(gpu.last.get("util")),
            temp=_number(gpu.last.get("temp")),
            power=_number(gpu.last.get("power")),
            util_hist=gpu.util.tail_values(2 * spark_width),
            temp_hist=gpu.temp.tail_values(2 * spark_width),
            power_hist=gpu.power.tail_values(2 * spark_width),
        )
        for gpu in sorted(store.gpus.values(), key=lambda g: g.index)
    ]
    origin = _number(state.get("created_at"))
    if origin is None:
        firsts = [e.t for e in store.events if e.t is not None]
        origin = firsts[0] if firsts else progress.first_t
    rows: list[tuple[float, int, EventRow]] = []
    for order, event in enumerate(list(store.events)[-max_events:]):
        row = EventRow(elapsed(event.t, origin), event.text, event.severity)
        rows.append((event.t if event.t is not None else float("inf"), order, row))
    for order, alert in enumerate(list(store.alerts)[-max_events:]):
        severity = "error" if alert.severity == "error" else "warning"
        if alert.kind in ("completed", "stopped"):
            severity = "done"
        row = EventRow(elapsed(alert.t, origin), alert.message, severity, alert=True)
        rows.append((alert.t if alert.t is not None else float("inf"), 10_000 + order, row))
    rows.sort(key=lambda r: (r[0], r[1]))
    last_progress = store.last_progress_t()
    running = store.status not in ("completed", "failed", "stopped")
    train_seconds = None
    if progress.first_t is not None and progress.last_t is not None:
        train_seconds = progress.last_t - progress.first_t
    mem = store.torch_memory
    torch_peak = _number(mem.get("max_reserved")) or _number(mem.get("max_allocated"))
    return DashFrame(
        run_id=store.run.run_id,
        status=store.status,
        failure=store.failure,
        stalled=store.stalled,
        live=store.live,
        model=str(state.get("model") or "?"),
        method=str(state.get("method") or "?"),
        num_gpus=int(_number(state.get("num_gpus")) or max(1, len(store.gpus))),
        host=state.get("host"),
        step=progress.step,
        max_steps=progress.max_steps,
        epoch=progress.epoch,
        eta_seconds=progress.eta_seconds,
        seconds_per_step=progress.seconds_per_step,
        train_seconds=train_seconds,
        last_step_age=(now - last_progress) if running and last_progress else None,
        loss=_last(store.loss),
        loss_smooth=_last(store.loss_smooth),
        eval_loss=_last(store.eval_loss),
        lr=_last(store.lr),
        grad_norm=_last(store.grad_norm),
        tokens_per_s=_last(store.tokens_per_s),
        planned_tokens_per_s=store.planned_tokens_per_s,
        measured_tokens_per_s=store.measured_tokens_per_s,
        samples_per_s=_last(store.samples_per_s),
        tokens_seen=progress.tokens_seen,
        tokens_hist=store.tokens_per_s.tail_values(2 * spark_width),
        loss_chart=loss_chart,
        lr_chart=lr_chart,
        perplexity_chart=perplexity_chart,
        gpus=gpus,
        plan_device_gib=plan_device,
        plan_allocated_gib=_number(plan.get("allocated_gib")),
        torch_peak_gib=torch_peak / GIB if torch_peak else None,
        events=[row for _, _, row in rows[-max_events:]],
        alerts=alerts,
        stage=store.stage or "sft",
        preference=store.is_preference,
        perplexity=_last(store.perplexity),
        chosen=_last(pref.chosen),
        rejected=_last(pref.rejected),
        margin=_last(pref.margin),
        accuracy=pref.recent_accuracy,
        rewards_chart=rewards_chart,
        margin_chart=margin_chart,
    )


# -- formatting --------------------------------------------------------------------------------
def number(value: float | None, spec: str = ".4g") -> str:
    if value is None:
        return "–"
    if spec == "lr":
        return f"{value:.2e}"
    return format(value, spec)
