"""Everything a dashboard shows about one run, read from its run directory, in bounded memory.

`MetricsStore.refresh()` tails `metrics.jsonl`, `gpu.jsonl` and `events.jsonl` by byte offset
(a partial last line waits for the next call) and re-reads `state.json`. Each series keeps its
last `recent_points` points at full resolution and older ones in min/max buckets whose width
doubles as they fill, so a million-line file holds a few thousand points and keeps its spikes.

A file over `big_file_bytes` is opened in two parts, so the first frame of a long run comes
fast: its last `tail_bytes` are read line by line, the part before is sampled (a few thousand
lines picked at even byte offsets, plus the eval lines, found with `bytes.find` at C speed).
Charts of a long history therefore show a sample of it; the recent window, the progress, the
ETA and the alerts from the tail are exact (a NaN loss ends a run, so it is in the tail).

Alerts are typed records, each reported once: NaN/inf loss, loss spike, stalled run, and the
end of the run (completed, stopped, failed with its failure class).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.rundir import FINAL, JsonlTail, RunDir, read_json

GIB = 1024**3


# -- downsampling ----------------------------------------------------------------------------------
def lttb(xs: Sequence[float], ys: Sequence[float], n: int) -> tuple[list[float], list[float]]:
    """Largest-Triangle-Three-Buckets: `n` points that keep the shape of the series.

    Keeps the first and the last point; from each of the `n - 2` buckets in between it keeps
    the point that makes the largest triangle with the point kept before it and the average of
    the next bucket, so peaks and dips survive (Steinarsson 2013)."""
    size = len(xs)
    if size != len(ys):
        raise ValueError("xs and ys differ in length")
    if size <= n:
        return list(xs), list(ys)
    if n <= 0:
        return [], []
    if n == 1:
        return [xs[-1]], [ys[-1]]
    if n == 2:
        return [xs[0], xs[-1]], [ys[0], ys[-1]]
    every = (size - 2) / (n - 2)
    out_x, out_y = [xs[0]], [ys[0]]
    a = 0
    for i in range(n - 2):
        avg_start = int((i + 1) * every) + 1
        avg_end = min(int((i + 2) * every) + 1, size)
        count = avg_end - avg_start
        avg_x = sum(xs[avg_start:avg_end]) / count
        avg_y = sum(ys[avg_start:avg_end]) / count
        ax, ay = xs[a], ys[a]
        dx, dy = ax - avg_x, avg_y - ay
        best, best_area = int(i * every) + 1, -1.0
        for j in range(int(i * every) + 1, int((i + 1) * every) + 1):
            area = abs(dx * (ys[j] - ay) - (ax - xs[j]) * dy)
            if area > best_area:
                best_area, best = area, j
        out_x.append(xs[best])
        out_y.append(ys[best])
        a = best
    out_x.append(xs[-1])
    out_y.append(ys[-1])
    return out_x, out_y


# -- bounded series --------------------------------------------------------------------------------
Point = tuple[float, float]


class Series:
    """(x, y) points in x order: the last `recent` at full resolution, older ones in at most
    `buckets` min/max buckets (each keeps its lowest and highest point) of doubling width."""

    def __init__(self, recent: int = 2048, buckets: int = 1024) -> None:
        if recent < 1 or buckets < 2:
            raise ValueError("recent >= 1 and buckets >= 2")
        self._recent_cap = recent
        self._bucket_cap = buckets
        self._recent: deque[Point] = deque()
        self._buckets: list[tuple[Point, ...]] = []
        self._width = 1  # raw points per bucket
        self._pending: list[Point] = []  # lowest and highest of the bucket being filled
        self._pending_count = 0
        self.version = 0  # bumps on every change (views cache on it)

    def __len__(self) -> int:
        return self.retained

    @property
    def retained(self) -> int:
        return len(self._recent) + sum(len(b) for b in self._buckets) + len(self._pending)

    @property
    def last(self) -> Point | None:
        if self._recent:
            return self._recent[-1]
        if self._pending:
            return max(self._pending)
        return max(self._buckets[-1]) if self._buckets else None

    def append(self, x: float, y: float) -> None:
        self._recent.append((x, y))
        if len(self._recent) > self._recent_cap:
            self._to_history(self._recent.popleft())
        self.version += 1

    def _to_history(self, point: Point) -> None:
        pending = self._pending
        if not pending:
            pending.append(point)
        elif len(pending) == 1:
            pending.append(point)
            pending.sort(key=_y)
        elif point[1] < pending[0][1]:
            pending[0] = point
        elif point[1] > pending[1][1]:
            pending[1] = point
        self._pending_count += 1
        if self._pending_count >= self._width:
            self._buckets.append(_extremes(pending))
            self._pending, self._pending_count = [], 0
            if len(self._buckets) > self._bucket_cap:
                self._merge()

    def _merge(self) -> None:
        old = self._buckets
        merged = [_extremes([*old[i], *old[i + 1]]) for i in range(0, len(old) - 1, 2)]
        if len(old) % 2:
            merged.append(old[-1])
        self._buckets = merged
        self._width *= 2

    def truncate_after(self, x: float) -> None:
        """Drop every point above `x` (a run resumed from an earlier step)."""
        changed = False
        while self._recent and self._recent[-1][0] > x:
            self._recent.pop()
            changed = True
        if not self._recent:
            kept = [p for p in self._pending if p[0] <= x]
            if len(kept) != len(self._pending):
                self._pending, changed = kept, True
                self._pending_count = min(self._pending_count, len(kept))
            while self._buckets and min(self._buckets[-1])[0] > x:
                self._buckets.pop()
                changed = True
            if self._buckets and max(self._buckets[-1])[0] > x:
                self._buckets[-1] = tuple(p for p in self._buckets[-1] if p[0] <= x)
                changed = True
        if changed:
            self.version += 1

    def clear(self) -> None:
        self._recent.clear()
        self._buckets, self._pending, self._pending_count, self._width = [], [], 0, 1
        self.version += 1

    def points(self) -> list[Point]:
        out: list[Point] = [p for bucket in self._buckets for p in bucket]
        out.extend(sorted(self._pending))
        out.extend(self._recent)
        return out

    def xy(self) -> tuple[list[float], list[float]]:
        pts = self.points()
        return [p[0] for p in pts], [p[1] for p in pts]

    def tail_values(self, count: int) -> list[float]:
        """The y of the last `count` points (sparklines)."""
        recent = self._recent
        start = max(0, len(recent) - count)
        return [recent[i][1] for i in range(start, len(recent))]


def _y(point: Point) -> float:
    return point[1]


def _extremes(points: Sequence[Point]) -> tuple[Point, ...]:
    low = min(points, key=_y)
    high = max(points, key=_y)
    if low is high or low == high:
        return (low,)
    return (low, high) if low[0] <= high[0] else (high, low)


# -- records ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Alert:
    """Something a user must see: kind is one of nan, spike, stall, oom, died, failed,
    stopped, completed."""

    kind: str
    message: str
    severity: str = "error"  # error, warning, information (Textual's notify severities)
    step: int | None = None
    t: float | None = None


@dataclass(frozen=True)
class Event:
    t: float | None
    kind: str
    text: str
    severity: str = "info"  # info, warning, error


@dataclass(frozen=True)
class Progress:
    step: int | None
    max_steps: int | None
    epoch: float | None
    seconds_per_step: float | None
    eta_seconds: float | None
    tokens_seen: float | None
    first_t: float | None  # the first metrics line of this history
    last_t: float | None  # the last one

    @property
    def fraction(self) -> float | None:
        if self.step is None or not self.max_steps:
            return None
        return max(0.0, min(1.0, self.step / self.max_steps))


@dataclass
class GpuHistory:
    index: int
    used: Series
    util: Series
    temp: Series
    power: Series
    total_bytes: float | None = None
    peak_used_bytes: float = 0.0
    last: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RefreshResult:
    changed: bool
    alerts: list[Alert]


def _num(value: Any) -> float | None:
    """A finite number, else None (bools are not numbers here). Hot: called per field."""
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is int:
        return float(value)
    return None


def _bad_loss(value: Any) -> bool:
    """A loss that is present but not a finite number (the callback writes NaN as null)."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip().lower() in ("nan", "inf", "-inf", "infinity", "-infinity")
    return isinstance(value, float) and not math.isfinite(value)


def describe_event(record: dict[str, Any]) -> Event:
    """A line of events.jsonl as one readable sentence."""
    kind = str(record.get("event", "?"))
    t = _num(record.get("t"))
    step = record.get("step")
    at = f" at step {step}" if step is not None else ""
    texts = {
        "created": f"run created ({record.get('launcher', '?')} launcher)",
        "launched": f"launcher started (pid {record.get('pid', '?')})",
        "launcher_failed": f"the launcher failed to start: {record.get('message', '')}",
        "train_begin": f"training started{at} of {record.get('max_steps', '?')}",
        "resumed": f"resumed{at}",
        "resume": f"resume requested from {Path(str(record.get('checkpoint', '?'))).name}",
        "checkpoint": f"checkpoint saved{at}",
        "save_requested": f"save requested{at}",
        "save_requested_by_user": "save-now requested",
        "stop_requested": f"stopping{at} (checkpoint, then exit)",
        "stop_requested_by_user": "stop requested",
        "stop_now": "stop --now: signalled the run",
        "nan": f"loss is {record.get('loss', 'NaN')}{at}: training stopped",
        "oom": f"out of GPU memory{at}",
        "train_end": f"training ended{at}" + (" (stopped)" if record.get("stopped") else ""),
        "exited": f"exited with code {record.get('returncode', '?')}: {record.get('status', '?')}",
    }
    failed = kind == "exited" and record.get("status") == "failed"
    severity = "info"
    if failed or kind in ("nan", "oom", "launcher_failed"):
        severity = "error"
    elif kind.startswith("stop"):
        severity = "warning"
    text = texts.get(kind)
    if text is None:
        extra = " ".join(f"{k}={v}" for k, v in record.items() if k not in ("t", "event"))
        text = f"{kind} {extra}".strip()
    return Event(t=t, kind=kind, text=text, severity=severity)


# -- reading big files fast ------------------------------------------------------------------------
def _line_start_after(path: Path, offset: int) -> int:
    """The offset of the first line that starts at or after `offset`."""
    if offset <= 0:
        return 0
    with path.open("rb") as fh:
        fh.seek(offset - 1)
        while True:
            block = fh.read(65536)
            if not block:
                return fh.tell()
            cut = block.find(b"\n")
            if cut >= 0:
                return fh.tell() - len(block) + cut + 1


def sample_jsonl(
    path: Path,
    start: int,
    end: int,
    samples: int,
    needles: Sequence[bytes] = (),
    chunk_bytes: int = 8 << 20,
) -> Iterator[dict[str, Any]]:
    """About `samples` lines of `path[start:end]` at even byte offsets, plus the lines that
    contain one of `needles` (at most about `samples` of those too), in file order.

    `start` and `end` must be line starts. With needles it reads the range once in chunks
    (300 MB in well under a second); without, it only seeks to the picked lines."""
    import json

    if end <= start or samples <= 0:
        return
    if not needles:
        yield from _sample_by_seeking(path, start, end, samples)
        return
    stride = max(1.0, (end - start) / samples)
    next_pick = float(start)
    with path.open("rb") as fh:
        fh.seek(start)
        pos = start
        while pos < end:
            data = fh.read(min(chunk_bytes, end - pos))
            if not data:
                return
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # one line longer than a chunk: take it whole
                more = fh.readline()
                data, cut = data + more, len(data) + len(more)
            elif pos + len(data) < end:
                fh.seek(pos + cut)
            chunk_end = pos + cut
            starts: set[int] = set()
            while next_pick < chunk_end:
                rel = int(next_pick) - pos
                line_start = 0 if rel <= 0 else data.rfind(b"\n", 0, rel) + 1
                starts.add(line_start)
                next_pick += stride
            special: list[int] = []
            for needle in needles:
                hit = data.find(needle, 0, cut)
                while hit >= 0:
                    line_start = data.rfind(b"\n", 0, hit) + 1
                    special.append(line_start)
                    line_end = data.find(b"\n", hit, cut)
                    hit = data.find(needle, line_end, cut) if line_end >= 0 else -1
            budget = max(1, math.ceil(samples * cut / (end - start)))
            if len(special) > budget:
                special.sort()
                step = len(special) / budget
                special = [special[int(i * step)] for i in range(budget)]
            starts.update(special)
            for line_start in sorted(starts):
                line_end = data.find(b"\n", line_start, cut)
                line = data[line_start : line_end if line_end >= 0 else cut]
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue
                if isinstance(record, dict):
                    yield record
            pos = chunk_end


def _sample_by_seeking(path: Path, start: int, end: int, samples: int) -> Iterator[dict[str, Any]]:
    import json

    stride = (end - start) / samples
    last_start = -1
    with path.open("rb") as fh:
        for k in range(samples):
            pos = start + int(k * stride)
            fh.seek(pos)
            if pos > start:
                fh.readline()  # the rest of the line the seek landed in
            line_start = fh.tell()
            if line_start >= end or line_start == last_start:
                continue
            last_start = line_start
            try:
                record = json.loads(fh.readline())
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(record, dict):
                yield record


class _Source:
    """One JSONL file: an offset tail that notices when the file was replaced (a resume
    rewrites metrics.jsonl) and opens big files as a sampled prefix plus an exact tail."""

    def __init__(
        self, path: Path, tail_bytes: int, samples: int, needles: Sequence[bytes] = ()
    ) -> None:
        self.path = path
        self.tail_bytes = tail_bytes
        self.samples = samples
        self.needles = tuple(needles)
        self.tail: JsonlTail | None = None
        self.inode: int | None = None
        self.sampled_lines = 0

    def poll(self, big_file_bytes: int) -> tuple[bool, Iterable[dict[str, Any]]]:
        """(started over, records in file order)."""
        try:
            stat = self.path.stat()
        except OSError:
            return False, []
        tail = self.tail
        if tail is not None and stat.st_ino == self.inode and stat.st_size >= tail.offset:
            return False, tail.read()
        tail = self.tail = JsonlTail(self.path)
        self.inode = stat.st_ino
        if stat.st_size <= big_file_bytes:
            return True, tail.read()
        split = _line_start_after(self.path, stat.st_size - self.tail_bytes)
        tail.offset = split
        sampled = list(sample_jsonl(self.path, 0, split, self.samples, self.needles))
        self.sampled_lines = len(sampled)
        return True, [*sampled, *tail.read()]


class TextTail:
    """The last lines of a growing text log (stdout.log), read by offset. Progress bars that
    redraw with carriage returns keep only their last state, as a terminal would show."""

    def __init__(self, path: Path, first_read_bytes: int = 65536) -> None:
        self.path = path
        self.offset: int | None = None
        self._inode: int | None = None
        self._partial = b""
        self._first_read_bytes = first_read_bytes

    def read(self) -> tuple[bool, list[str]]:
        """(started over, new complete lines)."""
        try:
            stat = self.path.stat()
        except OSError:
            return False, []
        reset = self.offset is None or stat.st_ino != self._inode or stat.st_size < self.offset
        if reset:
            self._partial = b""
            self.offset = max(0, stat.st_size - self._first_read_bytes)
            self._inode = stat.st_ino
        assert self.offset is not None
        if stat.st_size == self.offset:
            return reset, []
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read(stat.st_size - self.offset)
        first_read = reset and self.offset > 0
        self.offset += len(chunk)
        parts = (self._partial + chunk).split(b"\n")
        self._partial = parts.pop()
        if first_read and parts:
            parts = parts[1:]  # the first line was cut by the seek
        return reset, [p.decode("utf-8", "replace").rstrip("\r").rsplit("\r", 1)[-1] for p in parts]


# -- the store -------------------------------------------------------------------------------------
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
    ) -> None:
        self.run = run if isinstance(run, RunDir) else RunDir(Path(run))
        self.stall_seconds = stall_seconds
        self.spike_factor = spike_factor
        self.spike_warmup = spike_warmup
        self.spike_window = spike_window
        self.spike_min_delta = spike_min_delta
        self.smoothing = smoothing
        self.eta_skip_steps = eta_skip_steps
        self.idle_util_pct = idle_util_pct
        self.big_file_bytes = big_file_bytes

        def series() -> Series:
            return Series(recent_points, history_buckets)

        def gpu_series() -> Series:
            return Series(max(64, recent_points // 4), max(32, history_buckets // 4))

        self.loss = series()
        self.loss_smooth = series()
        self.eval_loss = series()
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
        self._metrics = _Source(self.run.metrics, tail_bytes, sample_lines, (b'"eval_',))
        # GPU lines are many and wide (one entry per GPU); sparklines need the last few.
        self._gpu = _Source(self.run.gpu, tail_bytes // 4, sample_lines // 4)
        self._events = _Source(self.run.events, tail_bytes // 4, 0)
        self._plan_read = False
        self._reads_after_final = 0
        self._new_alerts: list[Alert] = []
        self._seen: set[tuple[Any, ...]] = set()
        self.stalled = False  # the stall condition holds now
        # Reset by _reset_metrics() / _reset_pace() (a resume starts them over).
        self._step: int | None = None
        self._first_t: float | None = None
        self._last_t: float | None = None
        self._progress_t: float | None = None
        self._ema: float | None = None
        self._window: deque[float] = deque()
        self._sorted: list[float] = []
        self._losses_seen = 0
        self._spike_quiet_until = -1
        self._pace_prev: tuple[int, float] | None = None
        self._pace_skip = eta_skip_steps
        self._sec_per_step: float | None = None
        self._line_interval: float | None = None

    # -- public ----------------------------------------------------------------------------------
    @property
    def status(self) -> str:
        return str(self.state.get("status") or "starting")

    @property
    def failure(self) -> str | None:
        failure = self.state.get("failure")
        return str(failure) if failure and self.status == "failed" else None

    @property
    def live(self) -> bool:
        """Whether refresh() still reads the JSONL files (a finished run is read once)."""
        return self._reads_after_final < 2

    @property
    def retained_points(self) -> int:
        """Points held in memory by every series together (the memory bound's witness)."""
        total = sum(s.retained for s in self._all_metric_series())
        for gpu in self.gpus.values():
            total += gpu.used.retained + gpu.util.retained + gpu.temp.retained
            total += gpu.power.retained
        return total

    def refresh(self, now: float | None = None) -> RefreshResult:
        """Read what is new in the run directory; returns whether anything changed and the
        alerts raised by it (each alert is raised once)."""
        import time

        now = time.time() if now is None else now
        before = self.version
        state = read_json(self.run.state)
        if state != self.state:
            self.set_state(state)
        if not self._plan_read:
            self._plan_read = True
            if not self.plan:
                self.plan = read_json(self.run.plan)
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
        max_steps = _num(last.get("max_steps")) or _num(self.state.get("max_steps"))
        eta = None
        if (
            self._sec_per_step is not None
            and max_steps
            and step is not None
            and self.status not in FINAL
        ):
            eta = max(0.0, (max_steps - step) * self._sec_per_step)
        return Progress(
            step=step,
            max_steps=int(max_steps) if max_steps else None,
            epoch=_num(last.get("epoch")),
            seconds_per_step=self._sec_per_step,
            eta_seconds=eta,
            tokens_seen=_num(last.get("tokens_seen")),
            first_t=self._first_t,
            last_t=self._last_t,
        )

    def last_progress_t(self) -> float | None:
        """When the step last advanced (or training started, before the first step)."""
        if self._progress_t is not None:
            return self._progress_t
        return _num(self.state.get("train_started_at"))

    # -- ingestion (public so tests and replays can feed records directly) ----------------------
    def add_metrics(self, record: dict[str, Any], *, now: float | None = None) -> None:
        step_value = _num(record.get("step"))
        if step_value is None:
            return
        step = int(step_value)
        t = _num(record.get("t"))
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
            self._track_pace(step, t)
        lr = _num(record.get("lr"))
        if lr is not None:
            self.lr.append(x, lr)
        grad = _num(record.get("grad_norm"))
        if grad is not None:
            self.grad_norm.append(x, grad)
        tps = _num(record.get("tokens_per_s"))
        if tps is not None:
            self.tokens_per_s.append(x, tps)
        sps = _num(record.get("samples_per_s"))
        if sps is not None:
            self.samples_per_s.append(x, sps)
        eval_loss = _num(record.get("eval_loss"))
        if eval_loss is not None:
            self.eval_loss.append(x, eval_loss)

    def add_gpu(self, record: dict[str, Any]) -> None:
        t = _num(record.get("t"))
        gpus = record.get("gpus")
        if t is None or not isinstance(gpus, list):
            return
        self.version += 1
        for sample in gpus:
            if not isinstance(sample, dict) or _num(sample.get("index")) is None:
                continue
            index = int(sample["index"])
            gpu = self.gpus.get(index)
            if gpu is None:
                make = self._gpu_series
                gpu = self.gpus[index] = GpuHistory(index, make(), make(), make(), make())
            gpu.last = sample
            for key, series in (
                ("used", gpu.used),
                ("util", gpu.util),
                ("temp", gpu.temp),
                ("power", gpu.power),
            ):
                value = _num(sample.get(key))
                if value is not None:
                    series.append(t, value)
            used = _num(sample.get("used"))
            if used is not None:
                gpu.peak_used_bytes = max(gpu.peak_used_bytes, used)
            total = _num(sample.get("total"))
            if total:
                gpu.total_bytes = total

    def add_event(self, record: dict[str, Any]) -> None:
        event = describe_event(record)
        self.events.append(event)
        self.version += 1
        step = record.get("step")
        if event.kind == "nan":
            self._nan_alert(int(step) if isinstance(step, int) else None, event.t, record)
        elif event.kind == "oom":
            self._alert(
                ("oom", step),
                Alert("oom", f"out of GPU memory{_at(step)}", step=_int(step), t=event.t),
            )

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
        threshold = self.stall_seconds
        if self._line_interval is not None:
            threshold = max(threshold, 5.0 * self._line_interval)
        idle_for = now - since
        if idle_for < threshold:
            return
        if self.gpus:
            utils = [_num(g.last.get("util")) for g in self.gpus.values()]
            known = [u for u in utils if u is not None]
            if known and max(known) >= self.idle_util_pct:
                return
        self.stalled = True
        step = self._step
        where = f"at step {step}" if step is not None else "before the first step"
        gpu_note = " and the GPUs are idle" if self.gpus else ""
        self._alert(
            ("stall", step, self._progress_t),
            Alert(
                "stall",
                f"stalled {where}: no new step for {_duration(idle_for)}{gpu_note}",
                severity="warning",
                step=step,
                t=now,
            ),
        )

    def _alert(self, key: tuple[Any, ...], alert: Alert) -> None:
        if key in self._seen:
            return
        self._seen.add(key)
        self.alerts.append(alert)
        self._new_alerts.append(alert)
        self.version += 1

    def _nan_alert(self, step: int | None, t: float | None, record: dict[str, Any]) -> None:
        if any(a.kind == "nan" and a.step == step for a in self.alerts):
            return
        value = record.get("loss", "NaN")
        text = "NaN" if value is None else str(value)
        self._alert(("nan", step), Alert("nan", f"loss is {text}{_at(step)}", step=step, t=t))

    def _end_alerts(self, now: float | None) -> None:
        state = self.state
        status = state.get("status")
        if status not in FINAL:
            return
        t = _num(state.get("finished_at")) or _num(state.get("updated_at")) or now
        key: tuple[Any, ...] = ("end", status, state.get("failure"), state.get("finished_at"))
        step = self._step
        at = _at(step)
        if status == "completed":
            loss = self.loss.last
            tail = f", final loss {loss[1]:.4g}" if loss else ""
            alert = Alert("completed", f"completed{at}{tail}", "information", step, t)
        elif status == "stopped":
            alert = Alert("stopped", f"stopped{at}", "information", step, t)
        else:
            failure = state.get("failure") or "error"
            note = state.get("note") or state.get("error")
            if failure == "oom":
                text = str(note or "ran out of GPU memory")
                alert = Alert("oom", f"failed: {text}", "error", step, t)
            elif failure == "killed":
                text = str(note or "the run's processes died")
                alert = Alert("died", f"failed: {text}", "error", step, t)
            elif failure == "nan":
                if any(a.kind == "nan" for a in self.alerts):
                    self._seen.add(key)
                    return
                alert = Alert("nan", f"failed: the loss became NaN{at}", "error", step, t)
            else:
                code = state.get("exit_code")
                detail = f" (exit code {code})" if code is not None else ""
                why = f": {note}" if note else ": see the log"
                alert = Alert("failed", f"failed ({failure}){detail}{why}", "error", step, t)
        self._alert(key, alert)

    # -- internals -------------------------------------------------------------------------------
    def _all_metric_series(self) -> list[Series]:
        return [
            self.loss,
            self.loss_smooth,
            self.eval_loss,
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
        self._reset_pace()
        self._window.clear()
        self._sorted.clear()
        self._losses_seen = 0
        self._spike_quiet_until = -1

    def _reset_pace(self) -> None:
        self._pace_prev = self._sec_per_step = self._line_interval = None
        self._pace_skip = self.eta_skip_steps

    def _truncate(self, step: int) -> None:
        """A resumed run logs from an earlier step: the abandoned attempt's points go."""
        for series in self._all_metric_series():
            series.truncate_after(float(step))
        last = self.loss_smooth.last
        self._ema = last[1] if last else None
        self._window.clear()
        self._sorted.clear()
        self._losses_seen = 0
        self._reset_pace()

    def _add_loss(self, x: float, value: Any, t: float | None) -> None:
        if _bad_loss(value):
            self._nan_alert(int(x), t, {"loss": value})
            return
        loss = _num(value)
        if loss is None:
            return
        self.loss.append(x, loss)
        self._ema = loss if self._ema is None else self._ema + self.smoothing * (loss - self._ema)
        self.loss_smooth.append(x, self._ema)
        # A spike: well above the median of the recent losses, after a warm-up.
        self._losses_seen += 1
        if (
            self._losses_seen > self.spike_warmup
            and len(self._sorted) >= self.spike_warmup
            and self._losses_seen > self._spike_quiet_until
        ):
            median = self._sorted[len(self._sorted) // 2]
            if loss > self.spike_factor * median and loss - median > self.spike_min_delta:
                self._spike_quiet_until = self._losses_seen + self.spike_window
                self._alert(
                    ("spike", int(x)),
                    Alert(
                        "spike",
                        f"loss spike at step {int(x)}: {loss:.4g}, "
                        f"{loss / median:.1f}× the recent median {median:.4g}",
                        severity="warning",
                        step=int(x),
                        t=t,
                    ),
                )
        self._window.append(loss)
        bisect.insort(self._sorted, loss)
        if len(self._window) > self.spike_window:
            old = self._window.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]

    def _track_pace(self, step: int, t: float | None) -> None:
        """Seconds per step (ETA) and seconds per line (stall threshold), as EMAs; the first
        intervals after a start or resume are slow (compilation, warm-up) and skipped."""
        if t is None:
            return
        prev = self._pace_prev
        self._pace_prev = (step, t)
        if prev is None:
            return
        steps, dt = step - prev[0], t - prev[1]
        if steps <= 0 or dt <= 0:
            return
        if self._sec_per_step is not None and dt / steps > 20 * self._sec_per_step + 600:
            self._pace_skip = self.eta_skip_steps  # a long pause (restart): start over
            return
        if self._pace_skip > 0:
            self._pace_skip -= 1
            return
        alpha = 0.1
        per_step = dt / steps
        self._sec_per_step = (
            per_step
            if self._sec_per_step is None
            else self._sec_per_step + alpha * (per_step - self._sec_per_step)
        )
        self._line_interval = (
            dt
            if self._line_interval is None
            else self._line_interval + alpha * (dt - self._line_interval)
        )

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


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _at(step: Any) -> str:
    return f" at step {step}" if step is not None else ""


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
