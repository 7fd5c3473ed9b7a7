"""Cold-start times of `ftui --help`, `ftui gpus --json` and the app's first frame.

Each run is a fresh interpreter (the way a user starts ftui over SSH). Prints the median and
the worst of N runs. Usage: python benchmarks/startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

FIRST_FRAME = r"""
import sys, time
t0 = float(sys.argv[1])
from engine.machine.hardware import make_backend
from tui.app import FtuiApp

async def first_frame(pilot):
    screen = pilot.app.screen
    while screen.polls < 1:  # the first NVML reading is on screen
        await pilot.pause(0.005)
    await pilot.pause()
    print(f"FRAME {time.time() - t0:.4f}", flush=True)
    pilot.app.exit()

app = FtuiApp(make_backend(sys.argv[2] or None))
app.run(headless=True, size=(120, 40), auto_pilot=first_frame)
"""


def time_command(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - start


def time_first_frame(simulate: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", FIRST_FRAME, repr(time.time()), simulate],
        check=True,
        capture_output=True,
        text=True,
    )
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("FRAME "))
    return float(line.split()[1])


def report(label: str, samples: list[float]) -> None:
    print(
        f"{label:<42} median {statistics.median(samples) * 1000:7.0f} ms   "
        f"max {max(samples) * 1000:7.0f} ms   (n={len(samples)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    ftui = [sys.executable, "-m", "tui"]
    time_command([sys.executable, "-c", "pass"])  # warm the page cache
    report(
        "python -c pass (interpreter floor)",
        [time_command([sys.executable, "-c", "pass"]) for _ in range(runs)],
    )
    report("ftui --help", [time_command([*ftui, "--help"]) for _ in range(runs)])
    report("ftui gpus --json", [time_command([*ftui, "gpus", "--json"]) for _ in range(runs)])
    report(
        "ftui gpus --simulate h100x8 --json",
        [time_command([*ftui, "gpus", "--simulate", "h100x8", "--json"]) for _ in range(runs)],
    )
    report("ftui doctor --json", [time_command([*ftui, "doctor", "--json"]) for _ in range(runs)])
    report("app first frame (no GPU)", [time_first_frame("") for _ in range(runs)])
    report("app first frame (--simulate h100x8)", [time_first_frame("h100x8") for _ in range(runs)])


if __name__ == "__main__":
    main()
