"""The run dashboard: first frame on a huge run, CPU cost of watching a live one, chart cost.

1. Time from process start to the first full dashboard frame (headless, 120x40) on a run whose
   metrics.jsonl has 1,000,000 lines (plus 250,000 gpu.jsonl samples), and the peak RSS of that
   process against the same dashboard on a 100-line run (the growth is what loading costs).
2. CPU time / wall time of the app process while it watches a live run at the default 1 s
   refresh, with another process appending a metrics line every 0.5 s and a GPU sample every
   2 s (after a 20,000-line history).
3. Cost of drawing one chart: the dashboard's braille chart vs textual-plotext, same data.

The big run is generated once under $TMPDIR/ftui-bench-dashboard (about 400 MB) and reused.
Usage: python benchmarks/dashboard.py [--runs N] [--watch-seconds S]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
GIB = 1024**3
T0 = 1_700_000_000.0

APP = r"""
import resource, sys, time
t0 = float(sys.argv[1])
mode, run_path, seconds = sys.argv[2], sys.argv[3], float(sys.argv[4])
from pathlib import Path
from textual.app import App
from engine.run.rundir import RunDir
from tui.app import stylesheets
from tui.screens.dashboard.screen import DashboardScreen

class Bench(App):
    CSS_PATH = stylesheets("dashboard")
    def on_mount(self):
        self.push_screen(DashboardScreen(RunDir(Path(run_path))))

async def drive(pilot):
    screen = None
    while screen is None or screen.polls < 1:
        await pilot.pause(0.005)
        if isinstance(pilot.app.screen, DashboardScreen):
            screen = pilot.app.screen
    await pilot.pause()
    print(f"FRAME {time.time() - t0:.4f}", flush=True)
    print(f"RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", flush=True)
    if mode == "watch":
        await pilot.pause(2.0)  # settle: the first load is not steady state
        polls, c0, w0 = screen.polls, time.process_time(), time.monotonic()
        await pilot.pause(seconds)
        cpu, wall = time.process_time() - c0, time.monotonic() - w0
        print(f"CPU {cpu:.4f} {wall:.4f} {screen.polls - polls} {screen.frame.step}", flush=True)
    pilot.app.exit()

Bench().run(headless=True, size=(120, 40), auto_pilot=drive)
"""


def metrics_record(step: int, t: float, steps: int) -> dict[str, Any]:
    return {
        "t": t,
        "step": step,
        "epoch": step / 10_000,
        "loss": 2.0 * math.exp(-step / 50_000) + 0.5 + ((step * 7919) % 1000) / 10_000,
        "grad_norm": 1.0 + (step % 13) / 10,
        "lr": 2e-4 * (1 - step / steps),
        "tokens_seen": step * 4096.0,
        "tokens_per_s": 8192.0 + (step * 37) % 500,
        "tokens_per_s_kind": "non-padding input tokens, last logging interval",
        "samples_per_s": 16.0,
        "max_steps": steps,
    }


def gpu_record(t: float, i: int, gpus: int = 2) -> dict[str, Any]:
    return {
        "t": t,
        "gpus": [
            {
                "index": g,
                "used": int(61.5 * GIB) + g * GIB,
                "total": 80 * GIB,
                "util": 95.0 + (i + g) % 5,
                "temp": 65.0 + i % 7,
                "power": 600.0 + (i * 29) % 90,
            }
            for g in range(gpus)
        ],
    }


def make_run(
    path: Path, lines: int, *, status: str, steps: int | None = None, t0: float = T0
) -> Path:
    """A run directory with `lines` training steps (and an eval line every 500)."""
    steps = steps or lines
    path.mkdir(parents=True, exist_ok=True)
    state = {
        "run_id": path.name,
        "status": status,
        "model": "Qwen2.5-7B",
        "method": "qlora",
        "num_gpus": 2,
        "created_at": t0,
        "train_started_at": t0 + 60,
        "max_steps": steps,
        "plan_summary": {"device_gib": 60.0, "allocated_gib": 44.0},
    }
    if status == "running":  # this benchmark process stands in for the supervisor
        import psutil

        state["supervisor_pid"] = os.getpid()
        state["supervisor_create_time"] = psutil.Process().create_time()
    (path / "state.json").write_text(json.dumps(state))
    with (path / "metrics.jsonl").open("w") as fh:
        for step in range(1, lines + 1):
            t = t0 + 60 + step * 0.5
            fh.write(json.dumps(metrics_record(step, t, steps)) + "\n")
            if step % 500 == 0:
                fh.write(json.dumps({"t": t, "step": step, "eval_loss": 0.9}) + "\n")
    with (path / "gpu.jsonl").open("w") as fh:
        for i in range(lines // 4):
            fh.write(json.dumps(gpu_record(t0 + 60 + i * 2.0, i)) + "\n")
    events = [{"t": t0, "event": "created", "launcher": "torchrun"}]
    events += [
        {"t": t0 + 60 + s * 0.5, "event": "checkpoint", "step": s} for s in range(0, lines, 5000)
    ]
    with (path / "events.jsonl").open("w") as fh:
        fh.writelines(json.dumps(e) + "\n" for e in events)
    (path / "stdout.log").write_text("".join(f"step {i}\n" for i in range(2000)))
    return path


def run_app(mode: str, run: Path, seconds: float = 0.0) -> dict[str, list[float]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            APP,
            repr(time.time()),
            mode,
            str(run),
            str(seconds),
        ],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    values: dict[str, list[float]] = {}
    for line in out.stdout.splitlines():
        key, *rest = line.split()
        if key in ("FRAME", "RSS", "CPU"):
            values[key] = [float(v) for v in rest]
    return values


def bench_first_frame(root: Path, runs: int) -> None:
    big = root / "big-run-1m"
    marker = big / ".complete"
    if not marker.exists():
        print("generating a 1,000,000-line run (once)...", flush=True)
        shutil.rmtree(big, ignore_errors=True)
        make_run(big, 1_000_000, status="completed")
        marker.write_text("ok")
    size = (big / "metrics.jsonl").stat().st_size + (big / "gpu.jsonl").stat().st_size
    with tempfile.TemporaryDirectory() as tmp:
        small = make_run(Path(tmp) / "small-run", 100, status="completed")
        frames, rss_big, rss_small, small_frames = [], [], [], []
        for _ in range(runs):
            got = run_app("frame", big)
            frames.append(got["FRAME"][0])
            rss_big.append(got["RSS"][0])
            got = run_app("frame", small)
            small_frames.append(got["FRAME"][0])
            rss_small.append(got["RSS"][0])
    print(f"1. first full frame, 1,000,000 metrics lines ({size / 1e6:.0f} MB of JSONL):")
    print(
        f"   median {statistics.median(frames):.2f} s, max {max(frames):.2f} s "
        f"(100-line run: {statistics.median(small_frames):.2f} s)"
    )
    growth = (statistics.median(rss_big) - statistics.median(rss_small)) / 1024
    print(
        f"   peak RSS {statistics.median(rss_big) / 1024:.0f} MiB vs "
        f"{statistics.median(rss_small) / 1024:.0f} MiB on the 100-line run: "
        f"+{growth:.0f} MiB for loading"
    )


def bench_watch(seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.time() - 20_000 * 0.5 - 60  # its history ends now
        run = make_run(Path(tmp) / "live-run", 20_000, status="running", steps=100_000, t0=start)
        stop = threading.Event()

        def trainer() -> None:  # appends like the callback and the supervisor's sampler
            step, i, start = 20_000, 0, time.time()
            while not stop.wait(0.5):
                step += 1
                now = time.time()
                with (run / "metrics.jsonl").open("a") as fh:
                    fh.write(json.dumps(metrics_record(step, now, 100_000)) + "\n")
                if now - start >= 2.0 * (i + 1):
                    i += 1
                    with (run / "gpu.jsonl").open("a") as fh:
                        fh.write(json.dumps(gpu_record(now, i)) + "\n")

        writer = threading.Thread(target=trainer, daemon=True)
        writer.start()
        try:
            got = run_app("watch", run, seconds)
        finally:
            stop.set()
            writer.join()
    cpu, wall, polls, step = got["CPU"]
    print(f"2. watching a live run at the default 1 s refresh for {wall:.0f} s:")
    print(
        f"   CPU {cpu:.2f} s / wall {wall:.1f} s = {cpu / wall * 100:.1f}% of one core "
        f"({polls:.0f} refreshes, reached step {step:.0f})"
    )


CHART = r"""
import math, time
from rich.text import Text
from textual.app import App
from textual_plotext.plot import Plot
from tui.widgets.chart import BrailleChart
from tui.widgets.chart_data import ChartData, ChartLayer

xs = [float(i) for i in range(240)]
ys = [2 + math.sin(i / 10) + ((i * 7919) % 100) / 300 for i in range(240)]
smooth = [2 + math.sin(i / 10) for i in range(0, 240, 2)]
data = ChartData([ChartLayer(xs, ys, "points", "chart--points"),
                  ChartLayer(xs[::2], smooth, "line", "chart--line")], 1)
N = 50

class Bench(App):
    def compose(self):
        yield BrailleChart()
    async def on_mount(self):
        chart = self.query_one(BrailleChart)
        chart.show(data)
        t0 = time.perf_counter()
        for _ in range(N):
            chart.draw(80, 16)
        braille = (time.perf_counter() - t0) / N
        plot = Plot()
        t0 = time.perf_counter()
        for _ in range(N):
            plot.clear_data(); plot.clear_figure(); plot.plotsize(80, 16)
            plot.scatter(xs, ys, marker="braille"); plot.plot(xs[::2], smooth, marker="braille")
            Text.from_ansi(plot.build())
        plotext = (time.perf_counter() - t0) / N
        print(f"CHART {braille * 1000:.2f} {plotext * 1000:.2f}", flush=True)
        self.exit()

Bench().run(headless=True, size=(100, 30))
"""


def bench_chart() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", CHART], check=True, capture_output=True, text=True, env=env
    )
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("CHART "))
    braille, plotext = (float(v) for v in line.split()[1:])
    print("3. one 80x16 chart of 240 points + a 120-point line, drawn:")
    print(f"   braille chart {braille:.1f} ms vs textual-plotext {plotext:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--watch-seconds", type=float, default=20.0)
    args = parser.parse_args()
    root = Path(tempfile.gettempdir()) / "ftui-bench-dashboard"
    root.mkdir(exist_ok=True)
    print(f"{os.cpu_count()} CPU cores, Python {sys.version.split()[0]}")
    bench_first_frame(root, args.runs)
    bench_watch(args.watch_seconds)
    bench_chart()


if __name__ == "__main__":
    main()
