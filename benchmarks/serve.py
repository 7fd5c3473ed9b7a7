"""`ftui serve` vs `ftui chat --prompt` on the tiny model: the server's added latency and its
tokens/s.

Usage: python benchmarks/serve.py [--run RUN] [--tokens 200] [--rounds 11] [--threads 1]

Without --run it trains the demo's tiny model first (in a temporary FTUI_HOME). Like with like:
both sides answer the same prompt greedily with the same adapter, generate exactly --tokens
tokens (end of turn ignored; both count the tokens `generate` made, checked equal), each in a
process of its own with the same torch thread count (both processes report theirs), pinned to
the same CPU (the client on the other ones, as a remote client would be: `--cpu`), on a model
warmed by one answer of each kind first.

- chat: what `ftui chat RUN --prompt` runs (`ChatModel.stream(..., on_text=...)` then
  `wait()`), in a child process that answers one prompt per request. First token: from the
  call to the first text; end: when `wait()` returned.
- server streamed / not streamed: `ftui serve RUN` on a free port, asked through the official
  `openai` client from this process. First token: from the request to the first content
  chunk; end: the last chunk (or the response).

Tokens/s is end to end: tokens / (end - start). Each round measures two pairs, chat beside the
streamed server and chat beside the non-streamed one, back to back, chat first in even rounds
and second in odd ones, so a load spike from other processes hits both sides of a pair alike.
A path's slowdown is the median over pairs of chat's tokens/s over the path's, minus 1, with
the quartiles; its added latency the median (quartiles) of its first token minus chat's. The
decode pace of both, measured inside `generate` alike, is printed too (the server's comes
from its request log). The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PROMPT = "What is the secret fruit of red?"
PATHS = ("chat --prompt (ChatModel.stream, on_text)", "server, streamed", "server, not streamed")

CHILD = r"""
import json, sys, time
from engine.chat import ChatModel, Conversation, GenerationSettings, run_target
from engine.run.rundir import find_run
model = ChatModel.load(run_target(find_run(sys.argv[1])))
settings = GenerationSettings(temperature=0, max_new_tokens=int(sys.argv[2]), ignore_eos=True)
messages = Conversation().messages(sys.argv[3])
import torch
print("ready", torch.get_num_threads(), flush=True)
for _ in sys.stdin:
    first = []
    start = time.perf_counter()
    generation = model.stream(messages, settings, "final",
                              on_text=lambda t: first or first.append(time.perf_counter()))
    stats = generation.wait()
    end = time.perf_counter()
    print(json.dumps({"ttft": first[0] - start, "total": end - start, "tokens": stats.tokens,
                      "decode": stats.tokens_per_s}), flush=True)
"""


def train_demo_run() -> str:
    from engine.demo.recipe import demo_spec
    from engine.run.operations import launch, wait

    run = launch(demo_spec(max_steps=120))
    state = wait(run, timeout=900)
    if state.get("status") != "completed":
        raise SystemExit(f"the demo run ended {state.get('status')}: {run.stdout}")
    return run.run_id


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ftui_command() -> list[str]:
    script = Path(sys.executable).with_name("ftui")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tui"]


def pinned(cpus: set[int] | None) -> Any:
    """A preexec_fn that confines the child (and every thread it will start) to `cpus`."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def start_server(
    run_id: str, port: int, env: dict[str, str], cpus: set[int] | None
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([*ftui_command(), "serve", run_id, "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=pinned(cpus))  # fmt: skip
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit("the server did not start") from None
            time.sleep(0.2)
    raise SystemExit("the server did not answer /health")


def server_answer(client: Any, tokens: int, stream: bool) -> dict[str, float]:
    params: dict[str, Any] = {
        "model": "final",
        "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0,
        "max_tokens": tokens,
        "extra_body": {"ignore_eos": True},
    }
    start = time.perf_counter()
    if not stream:
        reply = client.chat.completions.create(**params)
        end = time.perf_counter()
        return {"ttft": end - start, "total": end - start, "tokens": reply.usage.completion_tokens}
    first = None
    count = 0
    for chunk in client.chat.completions.create(
        **params, stream=True, stream_options={"include_usage": True}
    ):
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter()
        if chunk.usage is not None:
            count = chunk.usage.completion_tokens
    end = time.perf_counter()
    return {"ttft": (first or end) - start, "total": end - start, "tokens": count}


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 4:
        m = statistics.median(values)
        return m, min(values), max(values)
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return q2, q1, q3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a run id (default: train the demo first)")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument(
        "--cpu", type=int, default=None,
        help="the CPU both chat and the server run on, the client on the others (default: the "
        "last CPU when there are two or more; -1: no pinning)",
    )  # fmt: skip
    args = parser.parse_args()
    count = os.cpu_count() or 1
    cpu = args.cpu if args.cpu is not None else (count - 1 if count > 1 else -1)
    cpus = {cpu} if cpu >= 0 else None
    if cpus:  # the client (this process) off that CPU, as a remote client would be
        os.sched_setaffinity(0, set(range(count)) - cpus or cpus)
    if not os.environ.get("FTUI_HOME"):
        os.environ["FTUI_HOME"] = tempfile.mkdtemp(prefix="ftui-serve-bench-")
    os.environ["HF_HUB_OFFLINE"] = "1"
    run_id = args.run or train_demo_run()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO)}

    import openai

    from engine.run.rundir import find_run
    from engine.serve.state import ServeDir

    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, run_id, str(args.tokens), PROMPT], env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        preexec_fn=pinned(cpus),
    )  # fmt: skip
    assert child.stdout is not None and child.stdin is not None
    word, chat_threads = child.stdout.readline().split()
    assert word == "ready"
    port = free_port()
    server = start_server(run_id, port, env, cpus)
    server_threads = ServeDir(find_run(run_id)).read().get("torch_threads")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
    stdin, stdout = child.stdin, child.stdout

    def chat_once() -> dict[str, float]:
        stdin.write("go\n")
        stdin.flush()
        return dict(json.loads(stdout.readline()))

    runners = {
        PATHS[0]: chat_once,
        PATHS[1]: lambda: server_answer(client, args.tokens, True),
        PATHS[2]: lambda: server_answer(client, args.tokens, False),
    }
    for runner in runners.values():  # warm-up: lazy imports, allocations, first-use paths
        runner()
    load_before = os.getloadavg()
    pairs: dict[str, list[tuple[dict[str, float], dict[str, float]]]] = {p: [] for p in PATHS[1:]}
    for round_index in range(args.rounds):
        for path in PATHS[1:]:
            if round_index % 2 == 0:
                chat, other = chat_once(), runners[path]()
            else:
                other, chat = runners[path](), chat_once()
            for result in (chat, other):
                if result["tokens"] != args.tokens:
                    raise SystemExit(f"an answer had {result['tokens']} tokens, not {args.tokens}")
            pairs[path].append((chat, other))
    child.stdin.close()
    child.wait(timeout=30)
    server.terminate()
    server.wait(timeout=30)
    placement = f"chat and server on CPU {cpu}, the client on the others" if cpus else "no pinning"
    header = (f"{args.rounds} rounds, {args.tokens} tokens, torch threads: chat {chat_threads}, "
              f"server {server_threads}, load average {load_before[0]:.1f} before, "
              f"{os.getloadavg()[0]:.1f} after ({count} CPUs; {placement})")  # fmt: skip
    report(pairs, run_id, header)


def report(pairs: dict[str, list[tuple[dict[str, float], dict[str, float]]]], run_id: str,
           header: str) -> None:  # fmt: skip
    from engine.run.rundir import find_run
    from engine.serve.state import ServeDir, read_requests

    def rate(r: dict[str, float]) -> float:
        return r["tokens"] / r["total"]

    def spread(values: list[float], fmt: str) -> str:
        mid, low, high = quartiles(values)
        return f"{fmt.format(mid)} ({fmt.format(low)}..{fmt.format(high)})"

    print(header)
    print("| path | first token | tokens/s | tokens/s vs chat, per pair | added first token |")
    print("|---|---|---|---|---|")
    chats = [c for rows in pairs.values() for c, _ in rows]
    print(f"| {PATHS[0]} | {statistics.median(c['ttft'] for c in chats) * 1000:.1f} ms | "
          f"{statistics.median(rate(c) for c in chats):.0f} | 0 | 0 |")  # fmt: skip
    for path, rows in pairs.items():
        ttft = statistics.median(o["ttft"] for _, o in rows) * 1000
        slower = spread([rate(c) / rate(o) - 1 for c, o in rows], "{:+.1%}")
        added = spread([(o["ttft"] - c["ttft"]) * 1000 for c, o in rows], "{:+.1f} ms")
        if path == PATHS[2]:
            ttft_text, added = "(whole answer)", "-"
        else:
            ttft_text = f"{ttft:.1f} ms"
        print(f"| {path} | {ttft_text} | {statistics.median(rate(o) for _, o in rows):.0f} | "
              f"{slower} | {added} |")  # fmt: skip
    serve = ServeDir(find_run(run_id))
    since = float(serve.read().get("started_at") or 0)  # this benchmark's server only
    served = [r for r in read_requests(serve) if r.get("tokens_per_s") and r["t"] >= since]
    chat_decode = statistics.median(float(c["decode"]) for c in chats if c.get("decode"))
    if served:
        decode = statistics.median(float(r["tokens_per_s"]) for r in served)
        print(f"decode tokens/s inside generate: chat {chat_decode:.0f}, server {decode:.0f} "
              f"(its request log)")  # fmt: skip


if __name__ == "__main__":
    main()
