"""`ftui eval`: loss, perplexity and answers of every checkpoint of a run.

    ftui eval RUN [--checkpoints all|final|N,...] [--data FILE] [--prompts FILE] [--samples N]
                  [--tasks NAME,...] [--json] [--detach]
    ftui eval RUN --status [--json]

Every input is checked before anything loads or starts in the background: an unknown checkpoint,
a missing file or `--tasks` without lm-eval is one message and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from engine.errors import FtuiError
from tui.cli.output import emit_json

# engine.eval.request's defaults, repeated so that building the parser imports nothing more
DEFAULT_SAMPLES = 8
DEFAULT_MAX_NEW_TOKENS = 128


def add_eval_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "eval",
        help="loss, perplexity and answers of every checkpoint of a run, beside the base",
        description="Measure each chosen checkpoint and the base: token-weighted loss and "
        "perplexity on the run's eval split (the same masking as training), and greedy "
        "answers to prompts or held-out samples scored with ROUGE-L and BLEU. Files go to "
        "the run's eval/ folder.",
    )
    parser.add_argument("run", help="run id, unique prefix or path")
    parser.add_argument(
        "--checkpoints",
        default="all",
        metavar="all|final|N,...",
        help="which checkpoints: all (default), final, or a list such as 80,final",
    )
    parser.add_argument(
        "--data",
        metavar="FILE",
        help="measure the loss on this dataset (any format ftui reads) "
        "instead of the run's eval split",
    )
    parser.add_argument(
        "--prompts",
        metavar="FILE",
        help="answer these: a .txt file (one prompt per line) or a "
        "dataset whose last assistant turns are the references",
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=DEFAULT_SAMPLES,
        metavar="N",
        help=f"without --prompts: answer N held-out samples (default {DEFAULT_SAMPLES}; 0: none)",
    )
    parser.add_argument(
        "--tasks",
        metavar="NAME,...",
        help="also run these lm-evaluation-harness tasks "
        "(needs lm-eval installed and its task data reachable)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--seed", type=int, help="generation seed (default: the run's seed)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--detach",
        action="store_true",
        help="run in the background (survives logout); follow it with --status",
    )
    parser.add_argument(
        "--status", action="store_true", help="show the latest evaluation's progress or result"
    )
    parser.set_defaults(handler=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from engine.eval import create_eval_dir, make_request, run_eval, start_detached
    from engine.run.rundir import find_run

    run = find_run(args.run)
    if args.status:
        return _show_status(run, as_json=args.json)
    tasks = tuple(t.strip() for t in (args.tasks or "").split(",") if t.strip())
    if args.tasks is not None and not tasks:
        raise FtuiError("--tasks is empty", "name lm-eval tasks, e.g. --tasks hellaswag,arc_easy")
    request = make_request(
        run,
        checkpoints=args.checkpoints,
        data=args.data,
        prompts=args.prompts,
        samples=args.samples,
        tasks=tasks,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        device=args.device,
    )
    if args.detach:
        folder = start_detached(request)
        if args.json:
            _print_json({"eval_id": folder.eval_id, "path": str(folder.path), "detached": True})
        else:
            sys.stdout.write(
                f"evaluating {run.run_id} in the background: {folder.path}\n"
                f"  progress: ftui eval {run.run_id} --status   (log: {folder.log})\n"
            )
        return 0
    _quiet_libraries()
    folder, request = create_eval_dir(request)
    results = run_eval(folder, request, echo=_echo)
    if args.json:
        _print_json(results)
    else:
        print_results(results)
    return 0


def _echo(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _quiet_libraries() -> None:
    from tui.cli.chat import _quiet_libraries as quiet

    quiet()


def _print_json(data: Any) -> None:
    emit_json(data)


def _num(value: Any, spec: str = ".4f", signed: bool = False) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    return format(value, ("+" if signed else "") + spec)


def _table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[c]) for r in [columns, *rows]) for c in range(len(columns))]
    for row in [columns, *rows]:
        line = "  ".join(
            v.rjust(w) if c else v.ljust(w)
            for c, (v, w) in enumerate(zip(row, widths, strict=True))
        )
        sys.stdout.write(line.rstrip() + "\n")


def _where(source: str) -> str:
    return f"the {source}" if source in ("eval split", "training data") else source


def print_results(results: dict[str, Any]) -> None:
    data = results["data"]
    counted = "the assistant answers" if data["mode"] == "sft" else "every token"
    sys.stdout.write(
        f"{results['run_id']}: loss on {_where(data['source'])} ({data['rows']} rows, "
        f"{data['tokens']} tokens counted: {counted})\n\n"
    )
    rows = [
        (
            r["checkpoint"],
            _num(r["loss"]),
            _num(r["perplexity"], ".3f"),
            "" if r["checkpoint"] == "base" else _num(r["delta_loss"], ".4f", signed=True),
            "" if r["checkpoint"] == "base" else _num(r["delta_perplexity"], ".3f", signed=True),
            "← best" if r["best"] else "",
        )
        for r in results["checkpoints"]
    ]
    _table(("checkpoint", "loss", "perplexity", "Δ loss", "Δ perplexity", ""), rows)
    generations = results["generations"]
    scores = generations["scores"]
    if scores:
        source, limit = _where(generations["source"]), generations["settings"]["max_new_tokens"]
        sys.stdout.write(
            f"\nanswers to {generations['prompts']} prompts ({source}, greedy, "
            f"max {limit} new tokens)\n\n"
        )
        score_rows = [
            (
                variant,
                str(s["scored"]),
                _num(s["exact_match"], ".2f"),
                _num(s["rouge_l"], ".3f"),
                _num(s["bleu"], ".1f"),
            )
            for variant, s in scores.items()
        ]
        _table(("checkpoint", "scored", "exact", "ROUGE-L", "BLEU"), score_rows)
        if generations["file"]:
            sys.stdout.write(
                f"\neach answer beside the reference and the base's: {generations['file']}\n"
            )
    if results.get("tasks"):
        sys.stdout.write("\nlm-eval:\n" + json.dumps(results["tasks"], indent=2) + "\n")
    seconds, device = results["seconds"], results["device"]
    sys.stdout.write(f"results: {_results_path(results)}  ({seconds:.1f} s on {device})\n")


def _results_path(results: dict[str, Any]) -> str:
    from pathlib import Path

    return str(Path(results["request"]["run_path"]) / "eval" / results["eval_id"] / "results.json")


def _show_status(run: Any, *, as_json: bool) -> int:
    from engine.eval import eval_status, latest_eval

    folder = latest_eval(run)
    if folder is None:
        raise FtuiError(
            f"run {run.run_id} has not been evaluated yet", f"start one: ftui eval {run.run_id}"
        )
    status = eval_status(folder)
    if as_json:
        results = None
        if status.get("status") in ("completed", "stopped") and folder.results.is_file():
            results = json.loads(folder.results.read_text(encoding="utf-8"))
        _print_json({**status, "results": results})
        return 0
    state = status.get("status", "starting")
    done, total = status.get("done"), status.get("total")
    share = f" {100 * done // total}%" if isinstance(done, int) and total else ""
    sys.stdout.write(f"eval {folder.eval_id} of {run.run_id}: {state}{share}\n")
    if state in ("starting", "running"):
        sys.stdout.write(f"  {status.get('stage', '')}\n  log: {folder.log}\n")
    elif state == "stopped":
        kept = status.get("kept") or []
        what = f"the results of {', '.join(kept)}" if kept else "no finished measurement"
        sys.stdout.write(f"  stopped by ftui stop --eval; kept {what}\n")
        if folder.results.is_file():
            sys.stdout.write(f"  partial results: {folder.results}\n")
    elif state == "failed":
        sys.stdout.write(f"  error: {status.get('error')}\n")
        if status.get("fix"):
            sys.stdout.write(f"  fix: {status['fix']}\n")
    elif folder.results.is_file():
        print_results(json.loads(folder.results.read_text(encoding="utf-8")))
    return 0
