"""Chat streaming overhead: raw `model.generate` vs ftui's streaming paths, on the tiny model.

Usage: python benchmarks/chat.py [--run RUN] [--tokens 300] [--repeats 9] [--threads 1]

Without --run it trains the demo's tiny model first (about 30 s on CPU, in a temporary
FTUI_HOME). Every path answers the same prompt greedily with the same adapter and generates
exactly --tokens tokens (end-of-turn suppressed), so only the delivery differs:

- raw: `model.generate(**inputs)`; time to first token = a generate of one new token.
- raw in a process of its own: the same in a child process, no streaming: the baseline for
  the paths whose model lives in the chat worker (a second process alone changes the pace).
- engine stream: `ChatModel.stream` in this process (generate in a thread, ftui's token
  streamer, the stop criterion), read chunk by chunk.
- worker process: `ChatWorker.stream` (the model in `python -m engine.chat.worker`, text as
  batched JSON lines), read chunk by chunk.
- chat screen: the screen in a headless app, the text through the pump into
  `Markdown.get_stream()`; with the model in the app's process, and in a worker process (what
  `ChatScreen` does by default). First token = the first text handed to the Markdown stream,
  end = the last text appended to the widget.

Tokens/s is end to end: tokens / (end - start); decode tokens/s is the generating thread's own
pace after its first token (what the answer's stats report), which shows whether a slow path
lost time delivering text or had its model starved of CPU. Each round runs every path once,
in an order rotated from round to round; a path's overhead is the median over the rounds of
the baseline's tokens/s over the path's in the same round (the spread: the quartiles), so a
busy machine or a drift slows the compared paths alike. CPU ms: what this process and the
worker process spent during an answer (psutil), which does not depend on the machine's load.
The tiny model decodes a token in ~1.5 ms of Python on a CPU: the worst case for any fixed
cost per token or per screen update.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPT = "What is the secret fruit of red?"
PATHS = (
    "raw model.generate",
    "raw model.generate in a process of its own",
    "engine stream (thread + streamer)",
    "worker process, read directly",
    "chat screen, model in the app's process",
    "chat screen, model in a worker process (default)",
)


def train_demo_run() -> Any:
    from engine.demo.recipe import demo_spec
    from engine.run.operations import launch, wait

    if not os.environ.get("FTUI_HOME"):
        os.environ["FTUI_HOME"] = tempfile.mkdtemp(prefix="ftui-chat-bench-")
    os.environ["HF_HUB_OFFLINE"] = "1"
    run = launch(demo_spec(max_steps=120))
    state = wait(run, timeout=900)
    if state.get("status") != "completed":
        raise SystemExit(f"the demo run ended {state.get('status')}: {run.stdout}")
    return run


# first token (s), tokens/s, decode tokens/s, CPU seconds of this process, of the worker process
Result = tuple[float, float, float | None, float, float]


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of a process (this one by default), all its threads."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


class CpuMeter:
    """CPU seconds spent by this process and by a worker process while a path answers."""

    def __init__(self, worker_pid: int | None = None) -> None:
        self.worker_pid = worker_pid
        self.here = cpu_seconds()
        self.worker = cpu_seconds(worker_pid) if worker_pid else 0.0

    def read(self) -> tuple[float, float]:
        worker = cpu_seconds(self.worker_pid) - self.worker if self.worker_pid else 0.0
        return cpu_seconds() - self.here, worker


def raw_generate(chat: Any, settings: Any) -> Result:
    """Plain `model.generate` calls."""
    import torch

    inputs = chat.encode([{"role": "user", "content": PROMPT}], settings.max_new_tokens)
    kwargs = chat.generate_kwargs(settings)
    with torch.inference_mode():
        start = time.perf_counter()
        chat.model.generate(**inputs, **{**kwargs, "max_new_tokens": 1, "min_new_tokens": 1})
        first = time.perf_counter() - start
        cpu = CpuMeter()
        start = time.perf_counter()
        out = chat.model.generate(**inputs, **kwargs)
        elapsed = time.perf_counter() - start
    assert out.shape[-1] - inputs["input_ids"].shape[-1] == settings.max_new_tokens
    return first, settings.max_new_tokens / elapsed, None, *cpu.read()


RAW_CHILD = """
import json, sys, time
import torch
from engine.chat import ChatModel, GenerationSettings, run_target
from engine.run.rundir import RunDir
from pathlib import Path
torch.set_num_threads(int(sys.argv[2]))
chat = ChatModel.load(run_target(RunDir(Path(sys.argv[1]))))
settings = GenerationSettings(**json.loads(sys.argv[3]))
inputs = chat.encode([{"role": "user", "content": sys.argv[4]}], settings.max_new_tokens)
kwargs = chat.generate_kwargs(settings)
print("ready", flush=True)
for _line in sys.stdin:
    with torch.inference_mode():
        start = time.perf_counter()
        chat.model.generate(**inputs, **kwargs)
        print(time.perf_counter() - start, flush=True)
"""


class RawProcess:
    """Plain `model.generate` in a child process, like the chat worker but without any
    streaming: the baseline that separates what a second process costs (or gains) from what
    streaming costs."""

    def __init__(self, run: Any, settings: Any, threads: int) -> None:
        import json
        import subprocess

        root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": root, "TRANSFORMERS_VERBOSITY": "error"}
        self.settings = settings
        self.process = subprocess.Popen(
            [sys.executable, "-c", RAW_CHILD, str(run.path), str(threads),
             json.dumps(settings.to_dict()), PROMPT],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, env=env,
        )  # fmt: skip
        assert self.process.stdout is not None and self.process.stdin is not None
        if self.process.stdout.readline().strip() != "ready":
            raise SystemExit("the raw-generate process did not start")

    def generate(self) -> Result:
        assert self.process.stdout is not None and self.process.stdin is not None
        cpu = CpuMeter(self.process.pid)
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        elapsed = float(self.process.stdout.readline())
        return 0.0, self.settings.max_new_tokens / elapsed, None, *cpu.read()

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait()


def engine_stream(chat: Any, settings: Any) -> Result:
    """`ChatModel.stream` (in this process) or `ChatWorker.stream` (a worker), read directly."""
    process = getattr(chat, "process", None)
    cpu = CpuMeter(process.pid if process else None)
    start = time.perf_counter()
    first_at = None
    answer = chat.stream([{"role": "user", "content": PROMPT}], settings, "final")
    for _chunk in answer:
        first_at = first_at or time.perf_counter()
    end = time.perf_counter()
    assert first_at is not None and answer.stats is not None
    rate = settings.max_new_tokens / (end - start)
    return first_at - start, rate, answer.stats.tokens_per_s, *cpu.read()


async def screen_stream(screen: Any, settings: Any) -> Result:
    await screen.action_new_chat()
    process = getattr(screen.engine, "process", None)
    cpu = CpuMeter(process.pid if process else None)
    start = time.perf_counter()
    screen.send(PROMPT)
    while screen.generating or not screen.columns[0].answers:
        await asyncio.sleep(0.002)
    used = cpu.read()
    answer = screen.columns[0].answers[-1]
    assert answer.stats is not None and answer.stats.tokens == settings.max_new_tokens
    assert answer.first_text_at is not None and answer.done_at is not None
    rate = settings.max_new_tokens / (answer.done_at - start)
    return answer.first_text_at - start, rate, answer.stats.tokens_per_s, *used


def torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def measure(chat: Any, run: Any, settings: Any, repeats: int) -> dict[str, list[Result]]:
    """Every path once per round, `repeats` rounds (after one warm-up round), the order rotated
    from round to round, so that a busy machine or a drift slows them alike."""
    from textual.app import App

    from engine.chat import ChatWorker, run_target
    from tui.app import stylesheets
    from tui.screens.chat.screen import ChatScreen, load_engine

    direct_worker = ChatWorker.start(run_target(run))
    raw_process = RawProcess(run, settings, torch_threads())
    in_process = ChatScreen(run, settings=settings, engine_factory=lambda target, _: chat)
    worker = ChatScreen(run, settings=settings, engine_factory=load_engine)
    screens = {PATHS[4]: in_process, PATHS[5]: worker}

    class BenchApp(App[None]):
        CSS_PATH = stylesheets("chat")

        def on_mount(self) -> None:
            for name, screen in screens.items():
                self.install_screen(screen, name)

    results: dict[str, list[Result]] = {name: [] for name in PATHS}

    async def drive() -> None:
        async with BenchApp().run_test(headless=True, size=(120, 40)) as pilot:

            async def on_screen(name: str) -> Result:
                screen = screens[name]
                await pilot.app.push_screen(name)
                while screen.engine is None:
                    await pilot.pause(0.05)
                result = await screen_stream(screen, settings)
                await pilot.app.pop_screen()
                return result

            async def one(path: str) -> Result:
                if path == PATHS[0]:
                    return raw_generate(chat, settings)
                if path == PATHS[1]:
                    return raw_process.generate()
                if path == PATHS[2]:
                    return engine_stream(chat, settings)
                if path == PATHS[3]:
                    return engine_stream(direct_worker, settings)
                return await on_screen(path)

            for index in range(repeats + 1):
                order = PATHS[index % len(PATHS) :] + PATHS[: index % len(PATHS)]
                measured = {path: await one(path) for path in order}
                if index:  # round 0 warms up
                    for path, result in measured.items():
                        results[path].append(result)
            direct_worker.close()
            raw_process.close()
            for screen in screens.values():
                if screen.engine is not None:
                    screen.engine.close()

    asyncio.run(drive())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a run to chat with (default: train the demo)")
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()

    import logging

    import torch

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from engine.chat import ChatModel, GenerationSettings, run_target
    from engine.run.rundir import find_run

    run = find_run(args.run) if args.run else train_demo_run()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the worker process too
    chat = ChatModel.load(run_target(run))
    settings = GenerationSettings(temperature=0, max_new_tokens=args.tokens, ignore_eos=True)
    results = measure(chat, run, settings, args.repeats)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"tiny model on {chat.device} ({args.threads} torch thread(s) per process), "
          f"{args.tokens} tokens, median of {args.repeats} rounds; {os.cpu_count()} CPUs, "
          f"load average {load}\n")  # fmt: skip
    print("| path | time to first token | tokens/s | overhead vs raw (quartiles) "
          "| vs raw in a process of its own | decode tokens/s "
          "| CPU ms per answer: this process + the other |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        first = statistics.median(row[0] for row in rows)
        rate = statistics.median(row[1] for row in rows)
        decode = [row[2] for row in rows if row[2] is not None]
        shown = f"{statistics.median(decode):,.0f}" if decode else "-"
        here = statistics.median(row[3] for row in rows) * 1000
        other = statistics.median(row[4] for row in rows) * 1000
        cpu = f"{here:.0f} + {other:.0f}" if other else f"{here:.0f}"
        vs_raw = overhead(results[PATHS[0]], rows)
        vs_process = overhead(results[PATHS[1]], rows)
        ttft = f"{first * 1000:.1f} ms" if first else "-"
        print(f"| {name} | {ttft} | {rate:,.0f} | {vs_raw} | {vs_process} | {shown} "
              f"| {cpu} |")  # fmt: skip


def overhead(baseline: list[Result], rows: list[Result]) -> str:
    """The median over rounds of the baseline's tokens/s over the path's in the same round."""
    ratios = [(base[1] / row[1] - 1) * 100 for base, row in zip(baseline, rows, strict=True)]
    middle = statistics.median(ratios)
    low, _, high = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [middle] * 3
    return f"{middle:+.1f}% ({low:+.0f}..{high:+.0f}%)"


if __name__ == "__main__":
    main()
