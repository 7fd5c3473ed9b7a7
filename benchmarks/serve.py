"""`ftui serve` vs `ftui chat --prompt` on the tiny model: the server's added latency and its
tokens/s.

Usage: python benchmarks/serve.py [--run RUN] [--tokens 200] [--rounds 11] [--threads 1]

Without --run it trains the demo's tiny model first (in a temporary FTUI_HOME). Both sides
answer the same prompt greedily with the same adapter and generate exactly --tokens tokens
(end of turn ignored), each in a process of its own with the same torch thread count:

- chat: what `ftui chat RUN --prompt` runs (`ChatModel.stream(..., on_text=...)` then
  `wait()`), in a child process that answers one prompt per round. First token: from the call
  to the first text; end: when `wait()` returned.
- server streamed / not streamed: `ftui serve RUN` on a free port, asked through the official
  `openai` client from this process. First token: from the request to the first content
  chunk; end: the last chunk (or the response).

Tokens/s is end to end: tokens / (end - start). Rounds run the three paths in an order rotated
from round to round; a path's overhead is the median over rounds of chat's tokens/s over the
path's in the same round (quartiles in brackets), its added latency the median of its first
token minus chat's. The server's own decode pace comes from its request log.
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
print("ready", flush=True)
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


def start_server(run_id: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([*ftui_command(), "serve", run_id, "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
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
    args = parser.parse_args()
    if not os.environ.get("FTUI_HOME"):
        os.environ["FTUI_HOME"] = tempfile.mkdtemp(prefix="ftui-serve-bench-")
    os.environ["HF_HUB_OFFLINE"] = "1"
    run_id = args.run or train_demo_run()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO)}

    import openai

    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, run_id, str(args.tokens), PROMPT], env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert child.stdout is not None and child.stdin is not None
    assert child.stdout.readline().strip() == "ready"
    port = free_port()
    server = start_server(run_id, port, env)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
    stdin, stdout = child.stdin, child.stdout

    def chat_once() -> dict[str, float]:
        stdin.write("go\n")
        stdin.flush()
        return dict(json.loads(stdout.readline()))

    runners = (
        chat_once,
        lambda: server_answer(client, args.tokens, True),
        lambda: server_answer(client, args.tokens, False),
    )
    for runner in runners:  # warm-up: first calls pay for lazy imports and allocations
        runner()
    results: dict[str, list[dict[str, float]]] = {p: [] for p in PATHS}
    for round_index in range(args.rounds):
        order = list(range(len(PATHS)))
        order = order[round_index % len(order) :] + order[: round_index % len(order)]
        for index in order:
            results[PATHS[index]].append(runners[index]())
    child.stdin.close()
    child.wait(timeout=30)
    server.terminate()
    server.wait(timeout=30)
    report(results, run_id, args)


def report(results: dict[str, list[dict[str, float]]], run_id: str, args: Any) -> None:
    from engine.run.rundir import find_run
    from engine.serve.state import ServeDir, read_requests

    base = results[PATHS[0]]
    print(f"{args.rounds} rounds, {args.tokens} tokens, {args.threads} torch thread(s), "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print("| path | first token | tokens/s | tokens/s vs chat | added first-token latency |")
    print("|---|---|---|---|---|")
    for path in PATHS:
        rows = results[path]
        ttft = statistics.median(r["ttft"] for r in rows)
        rate = statistics.median(r["tokens"] / r["total"] for r in rows)
        ratios = [b["tokens"] / b["total"] / (r["tokens"] / r["total"]) - 1
                  for b, r in zip(base, rows, strict=True)]  # fmt: skip
        added = [r["ttft"] - b["ttft"] for b, r in zip(base, rows, strict=True)]
        mid, low, high = quartiles(ratios)
        slower = "0" if path == PATHS[0] else f"{mid:+.1%} ({low:+.0%}..{high:+.0%})"
        extra = "0" if path == PATHS[0] else f"{statistics.median(added) * 1000:+.1f} ms"
        if path == PATHS[2]:
            extra += " (whole answer)"
        print(f"| {path} | {ttft * 1000:.1f} ms | {rate:.0f} | {slower} | {extra} |")
    served = [r for r in read_requests(ServeDir(find_run(run_id))) if r.get("tokens_per_s")]
    chat_decode = statistics.median(float(r["decode"]) for r in base if r.get("decode"))
    if served:
        decode = statistics.median(float(r["tokens_per_s"]) for r in served)
        print(f"decode tokens/s: chat {chat_decode:.0f}, server {decode:.0f} (its request log)")


if __name__ == "__main__":
    main()
