"""Bounded time series for charts, and LTTB downsampling to draw them.

`Series` keeps the last points of a metric at full resolution and older ones in min/max buckets
whose width doubles as they fill, so a million-step run holds a few thousand points and keeps
its spikes. `lttb` picks the points a chart of a given width draws.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence


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
