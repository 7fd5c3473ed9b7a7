"""`--tasks`: hand the run's base and each chosen adapter to lm-evaluation-harness.

ftui does not depend on lm-eval (it is large and pins its own stack); where it is installed,
`python -m lm_eval --model hf --model_args pretrained=BASE,peft=ADAPTER --tasks ...` runs per
checkpoint with its output under the evaluation's folder. Task data comes from the Hugging
Face hub; when it cannot be fetched (offline) the evaluation fails with one message saying so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from engine.chat import BASE, resolve_checkpoint, run_base_model
from engine.eval.request import EvalError, EvalRequest, check_tasks

_OFFLINE_MARKERS = (
    "offline",
    "ConnectionError",
    "Couldn't reach",
    "couldn't connect",
    "Failed to resolve",
    "Max retries exceeded",
    "LocalEntryNotFoundError",
)


def harness_command(
    base: str, adapter: Path | None, tasks: tuple[str, ...], device: str, out: Path
) -> list[str]:
    model_args = f"pretrained={base}" + (f",peft={adapter}" if adapter is not None else "")
    return [
        sys.executable,
        "-m",
        "lm_eval",
        "--model",
        "hf",
        "--model_args",
        model_args,
        "--tasks",
        ",".join(tasks),
        "--device",
        "cuda:0" if device in ("auto", "cuda") else device,
        "--batch_size",
        "auto",
        "--output_path",
        str(out),
    ]


def _results(out: Path) -> dict[str, Any]:
    """The task scores of the newest results file lm-eval wrote under `out`."""
    files = sorted(out.rglob("results*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        return {}
    try:
        data = json.loads(files[-1].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    results = data.get("results")
    return results if isinstance(results, dict) else {}


def run_tasks(request: EvalRequest, folder: Path, log: Path) -> dict[str, Any]:
    """Run the harness for the base and every chosen checkpoint; their scores by variant."""
    check_tasks(request.tasks)
    run = request.run
    base = run_base_model(run)
    scores: dict[str, Any] = {}
    for variant in request.variants:
        adapter = None if variant == BASE else resolve_checkpoint(run, variant).path
        out = folder / "lm-eval" / variant
        out.mkdir(parents=True, exist_ok=True)
        command = harness_command(base, adapter, request.tasks, request.device, out)
        with log.open("ab") as fh:
            fh.write(("$ " + " ".join(command) + "\n").encode())
            fh.flush()
            done = subprocess.run(
                command,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
                check=False,
            )
        if done.returncode != 0:
            tail = log.read_text(encoding="utf-8", errors="replace")[-4000:]
            if any(marker.lower() in tail.lower() for marker in _OFFLINE_MARKERS):
                raise EvalError(
                    f"lm-eval could not fetch the data of {','.join(request.tasks)}: this "
                    "machine cannot reach the Hugging Face hub",
                    "run it once where the hub is reachable (the data is cached after), or "
                    "drop --tasks",
                )
            raise EvalError(
                f"lm-eval failed on {variant} (exit {done.returncode})",
                f"see {log}; check the task names with `lm_eval --tasks list`",
            )
        scores[variant] = _results(out)
    return scores
