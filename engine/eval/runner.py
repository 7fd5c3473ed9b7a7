"""One evaluation from start to files: `run_eval` (in the foreground, or detached as
`python -m engine.eval.runner --eval-dir D`), its progress in `status.json`, and its results:
`results.json`, `generations.jsonl`, and the run's `eval/summary.json` when it finished."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.chat import BASE, GenerationSettings
from engine.errors import FtuiError
from engine.eval.prompts import Prompt, heldout_prompts, read_prompts
from engine.eval.request import EvalDir, EvalRequest, create_eval_dir, summary_path
from engine.paths import child_env
from engine.run.rundir import append_jsonl, write_json_atomic

Echo = Callable[[str], None]
STATUS_EVERY_S = 0.5  # status.json is rewritten at most this often (and at every stage)


class EvalStopped(BaseException):
    """`ftui stop RUN --eval` asked this evaluation to stop (SIGTERM): what was measured so far
    is written, the status says stopped."""


def _create_time(pid: int) -> float | None:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _alive(pid: Any, created: Any) -> bool:
    """`pid` runs, is no zombie, and is the process created at `created` (not a reused pid)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    import psutil

    try:
        proc = psutil.Process(pid)
        same = created is None or abs(proc.create_time() - float(created)) < 1.0
        return same and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, TypeError, ValueError):
        return False


class Progress:
    """Units of work (loss batches, answers) done out of the total, with the current stage,
    written to status.json for `ftui eval --status`, and echoed in the foreground."""

    def __init__(self, folder: EvalDir, echo: Echo | None) -> None:
        self.folder = folder
        self.echo = echo
        self.state: dict[str, Any] = {
            "status": "running",
            "pid": os.getpid(),
            "pid_create_time": _create_time(os.getpid()),
            "started_at": time.time(),
            "stage": "starting",
            "done": 0,
            "total": None,
        }
        self._written = 0.0
        self.write(force=True)

    def write(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self._written >= STATUS_EVERY_S:
            self._written = now
            write_json_atomic(self.folder.status, {**self.state, "updated_at": now})

    def stage(self, text: str, total: int | None = None) -> None:
        self.state["stage"] = text
        if total is not None:
            self.state["total"] = total
        self.write(force=True)
        if self.echo is not None:
            self.echo(self.line())

    def tick(self) -> None:
        self.state["done"] += 1
        self.write()

    def loading(self, stage: str, index: int, total: int) -> None:
        self.stage(f"loading {stage} ({index}/{total})")

    def line(self) -> str:
        done, total = self.state["done"], self.state["total"]
        share = f" [{100 * done // total}%]" if total else ""
        return f"eval{share} {self.state['stage']}"

    def finish(self, status: str, **fields: Any) -> None:
        self.state.update(status=status, finished_at=time.time(), **fields)
        self.write(force=True)


def run_eval(folder: EvalDir, request: EvalRequest, echo: Echo | None = None) -> dict[str, Any]:
    """Measure every variant, write the files, return results.json's content."""
    progress = Progress(folder, echo)
    partial: dict[str, Any] = {"losses": {}, "outputs": {}, "prompts": []}
    try:
        results = _measure(folder, request, progress, partial)
    except EvalStopped:
        kept = _write_partial(folder, request, partial)
        progress.finish("stopped", error=None, kept=kept)
        raise
    except BaseException as exc:
        message = exc.message if isinstance(exc, FtuiError) else f"{type(exc).__name__}: {exc}"
        fix = exc.fix if isinstance(exc, FtuiError) else None
        progress.finish("failed", error=message, fix=fix)
        raise
    progress.finish("completed", best=results["best"])
    return results


def _measure(
    folder: EvalDir, request: EvalRequest, progress: Progress, partial: dict[str, Any]
) -> dict[str, Any]:
    from engine.eval import measure

    started = time.time()
    spec = measure.run_spec(request)
    settings = GenerationSettings(
        temperature=0.0, max_new_tokens=request.max_new_tokens, seed=request.seed
    ).validate()
    # Filled as each variant is measured, so a stopped evaluation keeps what it measured.
    losses: dict[str, tuple[float, int]] = partial["losses"]
    outputs: dict[str, list[dict[str, Any]]] = partial["outputs"]
    data: measure.LossData | None = None
    prompts: list[Prompt] = []
    device = "?"
    for variant, chat, on_model in measure.loaded_variants(request, progress.loading):
        device = chat.device
        vocab = int(getattr(chat.model.config, "vocab_size", 0) or 32_000)
        if data is None:
            progress.stage("reading the data")
            data = measure.loss_data(request, spec, chat.tokenizer)
            prompts = _prompts(request, spec, chat.tokenizer, data)
            partial["prompts"] = prompts
            batches = measure.batch_count(data.rows, spec.training.batch, vocab)
            progress.stage("measuring", total=len(request.variants) * (batches + len(prompts)))
        progress.stage(f"loss of {variant} on the {data.source} ({len(data.rows)} rows)")
        losses[variant] = measure.token_loss(
            chat, on_model, data.rows, spec.training.batch, progress.tick
        )
        if prompts:
            progress.stage(f"answers of {variant} ({len(prompts)} prompts)")
            outputs[variant] = measure.answers(chat, on_model, prompts, settings, progress.tick)
    assert data is not None
    table = _loss_table(request, losses)
    # The lowest loss; on a tie the later checkpoint (final is usually the last one saved).
    best = min(reversed([r for r in table if r["checkpoint"] != BASE]), key=lambda r: r["loss"])
    best["best"] = True
    rows = _generation_rows(request, prompts, outputs)
    for row in rows:
        append_jsonl(folder.generations, row)
    partial["generations_written"] = True
    from engine.eval.scoring import summarise

    references = [p.reference for p in prompts]
    scores = {
        variant: summarise([a["answer"] for a in outputs[variant]], references)
        for variant in request.variants
        if variant in outputs
    }
    tasks = None
    if request.tasks:
        from engine.eval.harness import run_tasks

        progress.stage(f"lm-eval tasks {','.join(request.tasks)}")
        tasks = run_tasks(request, folder.path, folder.log)
    results = {
        "run_id": request.run.run_id,
        "eval_id": folder.eval_id,
        "device": device,
        "seconds": round(time.time() - started, 2),
        "finished_at": time.time(),
        "data": {
            "source": data.source,
            "path": data.path,
            "mode": data.mode,
            "rows": len(data.rows),
            "tokens": data.tokens,
            "masked": "answers only" if data.mode == "sft" else "none",
        },
        "checkpoints": table,
        "best": best["checkpoint"],
        "generations": {
            "file": str(folder.generations) if rows else None,
            "prompts": len(prompts),
            "rows": len(rows),
            "source": "prompts file" if request.prompts else data.source,
            "settings": settings.to_dict(),
            "scores": scores,
        },
        "tasks": tasks,
        "request": request.to_dict(),
    }
    write_json_atomic(folder.results, results)
    base = next(r for r in table if r["checkpoint"] == BASE)
    write_json_atomic(
        summary_path(request.run),
        {
            "eval_id": folder.eval_id,
            "finished_at": results["finished_at"],
            "best": best["checkpoint"],
            "loss": best["loss"],
            "perplexity": best["perplexity"],
            "base_perplexity": base["perplexity"],
            "data": data.source,
            "results": str(folder.results),
        },
    )
    return results


def _write_partial(folder: EvalDir, request: EvalRequest, partial: dict[str, Any]) -> list[str]:
    """A stopped evaluation's results.json (`"partial": true`): the loss of every variant
    measured to its end, and the answers of every variant that answered every prompt; the
    run's summary.json (the latest finished evaluation) is left alone. The variants kept."""
    losses, outputs = partial["losses"], partial["outputs"]
    table = _loss_table(request, losses)
    rows = _generation_rows(request, partial["prompts"], outputs)
    if not partial.get("generations_written"):  # stopped after they were written: once
        for row in rows:
            append_jsonl(folder.generations, row)
    write_json_atomic(
        folder.results,
        {
            "run_id": request.run.run_id,
            "eval_id": folder.eval_id,
            "partial": True,
            "finished_at": time.time(),
            "checkpoints": table,
            "best": None,
            "generations": {
                "file": str(folder.generations) if rows else None,
                "rows": len(rows),
                "answered": list(outputs),
            },
            "request": request.to_dict(),
        },
    )
    return [v for v in request.variants if v in losses]


def _prompts(request: EvalRequest, spec: Any, tokenizer: Any, data: Any) -> list[Prompt]:
    if request.prompts is not None:
        return read_prompts(request.prompts)
    if request.data is not None:
        return heldout_prompts(
            request.data,
            tokenizer,
            None,
            count=request.samples,
            fmt="auto",
            seq_len=spec.training.seq_len,
        )
    return heldout_prompts(
        spec.data,
        tokenizer,
        data.heldout,
        count=request.samples,
        fmt=spec.data_format,
        seq_len=spec.training.seq_len,
    )


def _loss_table(request: EvalRequest, losses: dict[str, tuple[float, int]]) -> list[dict[str, Any]]:
    from engine.eval.measure import perplexity

    rows = []
    base_loss = None
    for variant in request.variants:
        if variant not in losses:  # a stopped evaluation: not measured
            continue
        total, tokens = losses[variant]
        loss = total / tokens if tokens else None
        if variant == BASE:
            base_loss = loss
        ppl, base_ppl = perplexity(loss), perplexity(base_loss)
        rows.append(
            {
                "checkpoint": variant,
                "loss": loss,
                "perplexity": ppl,
                "tokens": tokens,
                "delta_loss": None if loss is None or base_loss is None else loss - base_loss,
                "delta_perplexity": None if ppl is None or base_ppl is None else ppl - base_ppl,
                "best": False,
            }
        )
    return rows


def _generation_rows(
    request: EvalRequest, prompts: list[Prompt], outputs: dict[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """One row per prompt and checkpoint: the answer beside the reference and the base's."""
    from engine.eval.scoring import score_answer

    if not prompts or not outputs:
        return []
    rows = []
    for index, prompt in enumerate(prompts):
        base = outputs[BASE][index]["answer"] if BASE in outputs else None
        for checkpoint in request.checkpoints:
            if checkpoint not in outputs:  # a stopped evaluation: not answered
                continue
            answer = outputs[checkpoint][index]
            rows.append(
                {
                    "prompt_index": index,
                    **prompt.to_dict(),
                    "checkpoint": checkpoint,
                    "answer": answer["answer"],
                    "answer_tokens": answer["tokens"],
                    "base_answer": base,
                    **score_answer(answer["answer"], prompt.reference),
                    "base": None if base is None else score_answer(base, prompt.reference),
                }
            )
    return rows


# -- detached --------------------------------------------------------------------------------------


def start_detached(request: EvalRequest) -> EvalDir:
    """Create the evaluation's folder and start it in a session of its own (no terminal: an SSH
    hangup never reaches it), output to eval.log; returns at once."""
    folder, request = create_eval_dir(request)
    # Written before the child starts, which replaces it with its own (pid included) at once.
    write_json_atomic(
        folder.status, {"status": "starting", "started_at": time.time(), "stage": "starting"}
    )
    env = child_env()  # this same ftui first on the import path, unbuffered output
    with folder.log.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.eval.runner", "--eval-dir", str(folder.path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(folder.path),
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    threading.Thread(target=proc.wait, daemon=True).start()  # never a zombie under the TUI
    return folder


def eval_status(folder: EvalDir) -> dict[str, Any]:
    """status.json, with a running evaluation whose process is gone reported as failed."""
    status = folder.read_status()
    state = status.get("status")
    if "pid" in status:
        dead = state == "running" and not _alive(status["pid"], status.get("pid_create_time"))
    else:  # the child has not written its status yet: it has a minute to start
        dead = state == "starting" and time.time() - float(status.get("started_at") or 0) > 60
    if dead:
        status = {
            **status,
            "status": "failed",
            "error": "the evaluation's process died",
            "fix": f"see {folder.log}; run it again",
        }
    return {"eval_id": folder.eval_id, "path": str(folder.path), **status}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.eval.runner")
    parser.add_argument("--eval-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    folder = EvalDir(args.eval_dir)
    request = folder.read_request()

    def echo(line: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)

    def stopped(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the partial results are written
        raise EvalStopped()

    signal.signal(signal.SIGTERM, stopped)
    try:
        run_eval(folder, request, echo)
    except EvalStopped:
        print("stopped (ftui stop --eval): partial results in results.json", flush=True)
        return 0
    except FtuiError as exc:
        print(f"error: {exc}", flush=True)
        return 2
    except BaseException:
        traceback.print_exc()
        return 1
    print("completed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
