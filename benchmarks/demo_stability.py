"""How reliably the demo recipe learns: train it N times from scratch and grade the adapters.

Usage: python benchmarks/demo_stability.py [--runs 5] [--steps N] [--vary-seeds] [--keep]

Each run gets a fresh FTUI_HOME, so the tiny model and the dataset are rebuilt too (what a
first `ftui demo` does), then the demo spec is launched through the real runtime
(`engine.run.operations.launch` + `wait`) and the adapter is loaded as the chat loads it
(`ChatModel.load(run_target(run))`, greedy). Per run it prints:

- build: seconds to build the tiny model and the dataset (in this process);
- train: seconds from launch to the run's completed state (trainer start-up included);
- loss: the first and the final logged loss (mean of the last 5 logged steps);
- train exact: how many of the 64 training prompts get exactly the dataset's answer;
- paraphrase: how many of the 16 colours are answered exactly on a prompt never trained on;
- form: how many of the 80 answers have the learned form "The secret fruit of X is the Y.";
- digests of the base weights, the first losses and the adapter, to show which runs are
  bit-identical (a deterministic recipe gives one digest for all).

The machine's load average is printed too: timings are noisy when other jobs share the cores.

The recipe is seeded, so on one machine every run is the same run (one digest). `--vary-seeds`
builds run i's tiny model with seed i-1 and trains it with seed 41+i instead: how much margin
the recipe has when the numbers differ (another CPU, another torch) is what that shows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PARAPHRASE = "Name the secret fruit that {c} has."
LEARNED = re.compile(r"^The secret fruit of \w+ is the \w+\.$")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:8]


def grade(run: Any) -> dict[str, Any]:
    """Greedy answers of the run's final adapter to the training prompts and a paraphrase."""
    from engine.chat import ChatModel, Conversation, GenerationSettings, run_target
    from engine.demo.tiny import COLORS, FRUITS, demo_records

    chat = ChatModel.load(run_target(run))
    greedy = GenerationSettings(temperature=0, max_new_tokens=32)

    def ask(prompt: str) -> str:
        return chat.answer(Conversation().messages(prompt), greedy)[0]

    train_answers = [(ask(r["instruction"]), r["output"]) for r in demo_records()]
    para_answers = [
        (ask(PARAPHRASE.format(c=color)), f"The secret fruit of {color} is the {fruit}.")
        for color, fruit in zip(COLORS, FRUITS, strict=True)
    ]
    chat.close()
    every = train_answers + para_answers
    wrong = [got for got, want in train_answers if got != want]
    return {
        "train_exact": sum(got == want for got, want in train_answers),
        "train_total": len(train_answers),
        "para_exact": sum(got == want for got, want in para_answers),
        "para_total": len(para_answers),
        "form": sum(bool(LEARNED.match(got)) for got, _ in every),
        "form_total": len(every),
        "wrong_examples": wrong[:3],
    }


def one_run(index: int, steps: int | None, keep: bool, vary_seeds: bool) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix=f"ftui-demo-stability-{index}-"))
    os.environ["FTUI_HOME"] = str(home)
    os.environ["HF_HUB_OFFLINE"] = "1"
    from engine.demo.recipe import demo_spec, ensure_demo_assets
    from engine.run.operations import launch, wait
    from engine.run.rundir import JsonlTail

    start = time.perf_counter()
    if vary_seeds:
        from engine.demo.recipe import demo_model_dir
        from engine.demo.tiny import build_tiny_model

        build_tiny_model(demo_model_dir(), seed=index - 1)
    model_dir, _data = ensure_demo_assets()
    build_s = time.perf_counter() - start
    spec = demo_spec() if steps is None else demo_spec(max_steps=steps)
    if vary_seeds:
        spec = replace(spec, hyper=replace(spec.hyper, seed=41 + index))
    start = time.perf_counter()
    run = launch(spec)
    state = wait(run, timeout=1800)
    train_s = time.perf_counter() - start
    if state.get("status") != "completed":
        raise SystemExit(f"run {index} ended {state.get('status')}: {run.stdout.read_text()}")
    losses = [r["loss"] for r in JsonlTail(run.metrics).read() if "loss" in r]
    result = {
        "run": index,
        "build_s": build_s,
        "train_s": train_s,
        "steps": len(losses),
        "first_loss": losses[0],
        "final_loss": statistics.fmean(losses[-5:]),
        "base": _digest((model_dir / "model.safetensors").read_bytes()),
        "losses": _digest(json.dumps([round(x, 6) for x in losses[:20]]).encode()),
        "adapter": _digest((run.final / "adapter_model.safetensors").read_bytes()),
        **grade(run),
    }
    if not keep:
        import shutil

        shutil.rmtree(home, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None, help="max_steps (default: the demo's)")
    parser.add_argument("--vary-seeds", action="store_true", help="a different seed each run")
    parser.add_argument("--keep", action="store_true", help="keep each run's FTUI_HOME")
    args = parser.parse_args()

    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    seeds = ", a different seed each" if args.vary_seeds else ""
    print(f"{os.cpu_count()} CPUs; {args.runs} fresh demo trainings{seeds}\n")
    print("| run | build s | train s | loss first → final | train exact | paraphrase | form "
          "| base / losses / adapter | load avg |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    results = []
    for index in range(1, args.runs + 1):
        r = one_run(index, args.steps, args.keep, args.vary_seeds)
        results.append(r)
        load = os.getloadavg()[0]
        print(
            f"| {r['run']} | {r['build_s']:.1f} | {r['train_s']:.1f} "
            f"| {r['first_loss']:.3f} → {r['final_loss']:.4f} "
            f"| {r['train_exact']}/{r['train_total']} | {r['para_exact']}/{r['para_total']} "
            f"| {r['form']}/{r['form_total']} | {r['base']} / {r['losses']} / {r['adapter']} "
            f"| {load:.1f} |",
            flush=True,
        )
        if r["wrong_examples"]:
            print(f"|   | wrong: {r['wrong_examples']} |", flush=True)
    exact = [r["train_exact"] / r["train_total"] for r in results]
    print(
        f"\nworst run: {min(exact):.0%} of the training prompts exact; "
        f"train {min(r['train_s'] for r in results):.1f}-{max(r['train_s'] for r in results):.1f}"
        f" s, build {min(r['build_s'] for r in results):.1f}-"
        f"{max(r['build_s'] for r in results):.1f} s"
    )


if __name__ == "__main__":
    main()
