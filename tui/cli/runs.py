"""Run commands: launch, runs, status, logs, stop, save, resume, demo."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from engine.errors import FtuiError
from engine.run.spec import (
    INITS,
    LAUNCHERS,
    REPORT_TO,
    Budget,
    Distributed,
    Hyper,
    Preference,
    RunSpec,
)
from engine.training_config import LORA_INITS
from tui.cli.output import emit_json

_LAUNCH_PARSER: argparse.ArgumentParser | None = None
# Flags that say how to launch, not what: they go with a spec file.
_WITH_A_SPEC = ("spec", "dry_run", "json", "slurm", "handler", "download")


def _print_json(data: Any) -> None:
    emit_json(data, default=str)


def add_run_parsers(sub: Any) -> None:
    from tui.cli.plan import add_knob_arguments

    p = sub.add_parser("launch", help="start a fine-tune in the background (survives logout)")
    p.add_argument("spec", nargs="?", type=Path, help="a spec.yaml (or use --model/--data)")
    p.add_argument("--model", help="profile name, local dir or HF-cache model")
    p.add_argument("--data", help="dataset file or folder")
    p.add_argument("--name", help="a name for the run (default: the model's)")
    add_knob_arguments(p)
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--format", dest="data_format", default="auto", help="dataset format")
    p.add_argument("--skip-invalid", action="store_true", help="train without invalid records")
    p.add_argument("--eval-fraction", type=float, default=0.0)
    p.add_argument("--max-steps", type=int, default=-1, help="stop after N steps (-1: by epochs)")
    p.add_argument("--lr", type=float, help="learning rate (default 2e-4 adapters, 2e-5 full; "
                   "dpo/orpo/kto/simpo 5e-5, 5e-6)")  # fmt: skip
    p.add_argument("--save-steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--init",
        choices=(*INITS, *LORA_INITS[1:]),
        default="pretrained",
        help="scratch: random weights from the model's config (--stage pretrain); "
        "pissa/olora/gaussian: how LoRA's matrices start",
    )
    p.add_argument(
        "--from-run",
        metavar="RUN",
        help="start from this run's final adapter or model (e.g. DPO after SFT)",
    )
    p.add_argument("--beta", type=float, help="dpo/orpo/kto/simpo strength (0.1; simpo 2.0)")
    p.add_argument("--loss-type", default="auto", help="e.g. sigmoid, ipo, hinge (dpo)")
    p.add_argument(
        "--max-prompt-len",
        type=int,
        default=0,
        help="prompt tokens kept, from its end (default: half of --seq-len)",
    )
    p.add_argument(
        "--report-to",
        choices=REPORT_TO,
        default="none",
        help="also log to a tracker; ftui's own files stay the dashboard's",
    )
    from tui.cli.money import add_budget_arguments

    add_budget_arguments(p)
    p.add_argument(
        "--price",
        type=float,
        metavar="USD",
        help="USD per GPU-hour (default: $FTUI_HOME/config.toml [prices], else the GPU "
        "profile's; a CPU run has a price only when given)",
    )
    p.add_argument(
        "--notify",
        metavar="URL",
        help="webhook POSTed when the run ends, fails or stalls (ntfy, Slack-style, JSON)",
    )
    p.add_argument("--launcher", choices=LAUNCHERS, default="auto")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--node-rank", type=int, default=0)
    p.add_argument("--master-addr", default="127.0.0.1")
    p.add_argument("--master-port", type=int, default=29500)
    p.add_argument("--hostfile", help="DeepSpeed hostfile for multi-node runs")
    p.add_argument("--slurm", action="store_true",
                   help="prepare a run folder with an sbatch script, do not launch")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="print spec and command, launch nothing")
    p.add_argument("--download", action="store_true",
                   help="fetch the model's weights from the hub first if missing")  # fmt: skip
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_launch)
    global _LAUNCH_PARSER
    _LAUNCH_PARSER = p

    runs = sub.add_parser("runs", help="list runs with status, progress and last loss")
    runs.add_argument("--json", action="store_true")
    runs.set_defaults(handler=cmd_runs)

    status = sub.add_parser("status", help="one run's state, progress and checkpoints")
    status.add_argument("run")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=cmd_status)

    logs = sub.add_parser("logs", help="print a run's output (all ranks)")
    logs.add_argument("run")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until it ends")
    logs.set_defaults(handler=cmd_logs)

    stop = sub.add_parser("stop", help="stop a run: checkpoint, then exit (--now: kill)")
    stop.add_argument("run")
    stop.add_argument("--now", action="store_true", help="kill the run's processes now")
    stop.add_argument("--server", action="store_true", help="stop the run's `ftui serve` server")
    stop.add_argument(
        "--eval",
        action="store_true",
        help="stop the run's detached `ftui eval` (keeps what it measured)",
    )
    stop.set_defaults(handler=cmd_stop)

    save = sub.add_parser("save", help="ask a running run to save a checkpoint now")
    save.add_argument("run")
    save.set_defaults(handler=cmd_save)

    resume = sub.add_parser("resume", help="continue a stopped or failed run from its checkpoint")
    resume.add_argument("run")
    add_budget_arguments(resume)
    resume.set_defaults(handler=cmd_resume)

    demo = sub.add_parser("demo", help="train a tiny built-in model on CPU, end to end (~1 min)")
    demo.add_argument("--headless", action="store_true", help="print progress, no app")
    demo.add_argument("--steps", type=int, default=None, help="training steps (default 300)")
    demo.set_defaults(handler=cmd_demo)


# -- launch ------------------------------------------------------------------------------------


def _refuse_flags_beside_a_spec(args: argparse.Namespace) -> None:
    """A spec file is the whole run: a flag beside it would be ignored, so it is refused."""
    if _LAUNCH_PARSER is None:
        return
    defaults = vars(_LAUNCH_PARSER.parse_args([]))
    given = [
        name
        for name, default in defaults.items()
        if name not in _WITH_A_SPEC and getattr(args, name, default) != default
    ]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise FtuiError(
            f"{flags} beside a spec file would be ignored: the spec file is the whole run",
            f"set it in {args.spec}, or launch with --model and --data instead of a spec file",
        )


def spec_from_args(args: argparse.Namespace) -> tuple[RunSpec, dict[str, Any]]:
    """A spec from flags: the planner's recommendation, with the user's pins applied."""
    from tui.cli.plan import pinned_knobs

    if args.spec is not None:
        _refuse_flags_beside_a_spec(args)
        try:
            text = args.spec.read_text(encoding="utf-8")
        except OSError as exc:
            raise FtuiError(f"cannot read {args.spec}: {exc}", "pass a spec.yaml path") from exc
        spec = RunSpec.from_yaml(text)
        from tui.cli.money import priced

        return priced(spec, dict(spec.plan or {}), None), {}
    if args.from_run and not args.model:
        args.model = _base_model_of(args.from_run)
    if not args.model or not args.data:
        raise FtuiError("launch needs a spec file, or --model and --data", "see `ftui launch -h`")
    from engine.run.preflight import local_model, scratch_model

    if args.init == "scratch":
        name, model_path = args.model, scratch_model(args.model, None)
    else:
        name, model_path = local_model(args.model)
    if args.init in LORA_INITS:  # --init pissa|olora|gaussian: LoRA's start, pretrained weights
        args.lora_init, args.init = args.init, "pretrained"
    pinned = pinned_knobs(args)
    device = args.device
    plan_summary: dict[str, Any] = {}
    from engine.training_config import TrainingConfig

    if device == "cpu" or (device == "auto" and not _has_gpu(args)):
        device = "cpu"
        pinned.setdefault("num_gpus", 1)
        pinned.setdefault("grad_ckpt", False)
        pinned.setdefault("seq_len", 512)
        if pinned.get("method", "auto") == "auto":
            pinned["method"] = "full" if args.init == "scratch" else "lora"
        if pinned.get("stage") == "kto":
            pinned.setdefault("batch", 2)  # KTO's KL term needs other samples in the batch
        config = TrainingConfig(**pinned).validate()
    else:
        config, plan_summary = _planned_config(args, pinned)
    lr = args.lr if args.lr is not None else default_lr(config.stage, config.method, args.init)
    spec = RunSpec(
        model=name,
        model_path=model_path,
        data=str(Path(args.data).absolute()),
        name=args.name,
        data_format=args.data_format,
        eval_fraction=args.eval_fraction,
        skip_invalid=args.skip_invalid,
        device=device,
        init=args.init,
        from_run=args.from_run,
        training=config,
        preference=Preference(
            beta=args.beta, loss_type=args.loss_type, max_prompt_len=args.max_prompt_len
        ),
        hyper=Hyper(
            epochs=args.epochs,
            max_steps=args.max_steps,
            learning_rate=lr,
            save_steps=args.save_steps,
            seed=args.seed,
            report_to=args.report_to,
        ),
        distributed=Distributed(
            launcher=args.launcher,
            nodes=args.nodes,
            node_rank=args.node_rank,
            master_addr=args.master_addr,
            master_port=args.master_port,
            hostfile=args.hostfile,
        ),
        plan=plan_summary or None,
        budget=Budget(max_cost=args.max_cost, max_hours=args.max_hours, notify=args.notify),
    )
    spec.validate()  # bad caps or URL: one message before the price lookup
    from tui.cli.money import priced

    return priced(spec, plan_summary, args.price), plan_summary


def default_lr(stage: str, method: str, init: str) -> float:
    """Preference stages move a policy a little (TRL's and the papers' rates); pre-training
    from random weights needs a large rate."""
    if init == "scratch":
        return 3e-4
    if stage in ("dpo", "orpo", "kto", "simpo"):
        return 5e-6 if method == "full" else 5e-5
    return METHOD_LR.get(method, 2e-4)


# Usual rates per method (LoRA's 2e-4 for the rest): a few trained tokens or scales move slowly.
METHOD_LR = {"full": 2e-5, "freeze": 2e-5, "bias": 1e-3, "ia3": 3e-3, "prefix": 1e-2,
             "prompt": 1e-2, "ptuning": 1e-2, "llama-adapter": 1e-2}  # fmt: skip


def _base_model_of(ref: str) -> str:
    """--from-run without --model: the earlier run's own base model."""
    from engine.run.rundir import find_run

    spec = RunSpec.from_yaml(find_run(ref).spec.read_text(encoding="utf-8"))
    return spec.model_path or spec.model


def _has_gpu(args: argparse.Namespace) -> bool:
    if getattr(args, "simulate", None):
        return True
    from engine.machine.hardware import detect_machine

    return detect_machine().has_gpu


def _planned_config(args: argparse.Namespace, pinned: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    from engine.models import resolve_model
    from engine.plan.planner import PlanRequest, plan, resolve_machine

    arch = resolve_model(args.model)
    machine = resolve_machine(
        gpu=args.gpu, num_gpus=args.num_gpus, simulate=getattr(args, "simulate", None)
    )
    pinned.setdefault("num_gpus", machine.count)
    pinned.setdefault("seq_len", min(2048, arch.max_positions or 2048))
    result = plan(PlanRequest(arch=arch, machine=machine, pinned=pinned, headroom=args.headroom))
    if result.best is None or not result.best.fits:
        hints = "; ".join(result.suggestions) or "see `ftui plan`"
        raise FtuiError(f"no setup of {arch.name} fits {machine.gpu.name}", hints)
    best = result.best
    summary = {
        "gpu": machine.gpu.id,
        "gpu_count": best.config.num_gpus,
        "device_gib": round(best.memory.device_gib, 2),
        "reserved_gib": round(best.memory.reserved_gib, 2),
        "allocated_gib": round(best.memory.allocated_gib, 2),
        "peak_phase": best.memory.peak_phase,
        "tokens_per_s": round(best.tokens_per_s, 1),
        "eta_s": round(best.eta_s, 1),
        "eta_band_s": [round(v, 1) for v in best.eta_band],
    }
    return best.config, summary


def cmd_launch(args: argparse.Namespace) -> int:
    from engine.run.launch import build_launch, write_slurm_run
    from engine.run.operations import launch
    from engine.run.preflight import preflight

    if args.download:
        from tui.cli.download import download_for_launch

        download_for_launch(args)
    spec, plan_summary = spec_from_args(args)
    checked = preflight(spec)  # everything checkable, before anything is written or started
    spec, data_report = checked.spec, checked.data
    if args.slurm:
        script = write_slurm_run(spec, plan_summary)
        sys.stdout.write(script.read_text(encoding="utf-8"))
        sys.stderr.write(f"wrote {script}: submit it with `sbatch {script}`\n")
        return 0
    if args.dry_run:
        command = build_launch(spec, Path("<run-dir>"))
        if args.json:
            _print_json({"spec": spec.to_dict(), "command": command.to_dict(), "data": data_report})
        else:
            sys.stdout.write(spec.to_yaml())
            sys.stdout.write("\n# command\n" + command.to_dict()["shell"] + "\n")
        return 0
    run = launch(spec, plan_summary=plan_summary)
    if args.json:
        _print_json({"run_id": run.run_id, "path": str(run.path)})
    else:
        sys.stdout.write(
            f"launched {run.run_id}\n  watch: ftui logs {run.run_id} -f\n"
            f"  stop:  ftui stop {run.run_id}\n"
        )
    return 0


# -- runs, status, logs ---------------------------------------------------------------------------


def _age(t: float) -> str:
    seconds = max(0, time.time() - t)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def cmd_runs(args: argparse.Namespace) -> int:
    from engine.run.operations import list_runs

    infos = list_runs()
    if args.json:
        _print_json([i.to_dict() for i in infos])
        return 0
    if not infos:
        sys.stdout.write("no runs yet: try `ftui demo`\n")
        return 0
    columns = ("run", "status", "age", "progress", "loss", "GPUs", "model", "eval")
    rows = []
    for i in infos:
        progress = f"{i.step}/{i.max_steps}" if i.step is not None and i.max_steps else "-"
        loss = f"{i.loss:.4f}" if isinstance(i.loss, (int, float)) else "-"
        rows.append((i.run_id, i.label, _age(i.created_at), progress, loss, i.gpus_label,
                     f"{i.model} ({i.method})", _eval_label(i.eval)))  # fmt: skip
    if not sys.stdout.isatty():
        # Piped into a script: whole values, never cut to a terminal's width.
        widths = [max(len(r[c]) for r in [columns, *rows]) for c in range(len(columns))]
        for row in [columns, *rows]:
            line = "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True))
            sys.stdout.write(line.rstrip() + "\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in columns:
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    return 0


def _eval_label(summary: dict[str, Any] | None) -> str:
    """The latest `ftui eval`: its best checkpoint and that checkpoint's perplexity."""
    summary = summary or {}
    ppl = summary.get("perplexity")
    if not isinstance(ppl, (int, float)):
        return "-"
    return f"best {summary.get('best')}, perplexity {ppl:.3g}"


def cmd_status(args: argparse.Namespace) -> int:
    from engine.run.operations import reconcile, run_info
    from engine.run.rundir import find_run

    run = find_run(args.run)
    state = reconcile(run)
    info = run_info(run)
    checkpoints = [p.name for p in run.checkpoints_complete()]
    from engine.run.cost import run_cost

    cost = run_cost(run, state, now=time.time())
    if args.json:
        _print_json(
            {**info.to_dict(), "state": state, "checkpoints": checkpoints, "cost": cost.to_dict()}
        )
        return 0
    out = [
        f"{info.run_id}: {info.label}",
        f"  model {info.model} ({info.method}), "
        + ("on the CPU" if info.device == "cpu" else f"{info.num_gpus} GPU(s)"),
        f"  progress {info.step}/{info.max_steps}, last loss {info.loss}",
        f"  checkpoints: {', '.join(checkpoints) or 'none'}",
    ]
    from tui.cli.money import cost_lines

    out.extend(cost_lines(cost, final=state.get("status") in ("completed", "failed", "stopped")))
    if info.eval:
        out.append(f"  eval: {_eval_label(info.eval)} (`ftui eval {info.run_id} --status`)")
    if state.get("note"):
        out.append(f"  note: {state['note']}")
    for line in state.get("log_tail", [])[-5:] if state.get("status") == "failed" else []:
        out.append(f"  | {line}")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from engine.run.operations import reconcile
    from engine.run.rundir import FINAL, find_run

    run = find_run(args.run)
    offset = 0
    while True:
        try:
            with run.stdout.open("rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
        except OSError:
            chunk = b""
        if chunk:
            offset += len(chunk)
            sys.stdout.write(chunk.decode("utf-8", "replace"))
            sys.stdout.flush()
        if not args.follow or (reconcile(run).get("status") in FINAL and not chunk):
            return 0
        time.sleep(0.5)


def cmd_stop(args: argparse.Namespace) -> int:
    from engine.run.operations import reconcile, stop
    from engine.run.rundir import FINAL, find_run
    from engine.serve.state import live_server, stop_server

    if sum((args.server, args.eval, args.now)) > 1:
        raise FtuiError("--server, --eval and --now each stop something else", "give one of them")
    run = find_run(args.run)
    if args.eval:
        from engine.eval.control import stop_eval

        sys.stdout.write(stop_eval(run) + "\n")
        return 0
    # --server, or a finished run whose server still runs: stop the server (`ftui serve`).
    if args.server or (live_server(run) and reconcile(run).get("status") in FINAL):
        sys.stdout.write(stop_server(run) + "\n")
        return 0
    sys.stdout.write(stop(run, now=args.now) + "\n")
    return 0


def cmd_save(args: argparse.Namespace) -> int:
    from engine.run.operations import save_now
    from engine.run.rundir import find_run

    save_now(find_run(args.run))
    sys.stdout.write("requested: a checkpoint is saved at the end of this step\n")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from engine.run.operations import resume
    from engine.run.rundir import find_run

    caps = {"max_cost": args.max_cost, "max_hours": args.max_hours}
    checkpoint = resume(find_run(args.run), budget={k: v for k, v in caps.items() if v is not None})
    sys.stdout.write(f"resuming from {checkpoint}\n")
    return 0


# -- demo ------------------------------------------------------------------------------------


def print_pretrain_progress(step: int, steps: int, loss: float) -> None:
    """The tiny model's pre-training (the first demo on a machine): a line every tenth of
    the way, readable in a terminal and in a log alike."""
    if step == steps or step % max(1, steps // 10) == 0:
        sys.stdout.write(f"  pre-training the tiny model: step {step}/{steps}, loss {loss:.3f}\n")
        sys.stdout.flush()


def cmd_demo(args: argparse.Namespace) -> int:
    from engine.demo.recipe import DEMO_STEPS, demo_spec
    from engine.run.operations import launch, reconcile
    from engine.run.rundir import FINAL, JsonlTail

    sys.stdout.write("preparing the tiny demo model and dataset (built locally)…\n")
    sys.stdout.flush()
    max_steps = DEMO_STEPS if args.steps is None else args.steps
    spec = demo_spec(max_steps=max_steps, progress=print_pretrain_progress)
    run = launch(spec)
    sys.stdout.write(f"launched {run.run_id} on CPU; training…\n")
    if not args.headless:
        from engine.machine.hardware import make_backend
        from tui.app import FtuiApp

        FtuiApp(backend=make_backend(None), attach=run.run_id).run()
        return 0
    tail = JsonlTail(run.metrics)
    first_loss = last_loss = None
    while True:
        for record in tail.read():
            if "loss" not in record:
                continue
            last_loss = record["loss"]
            first_loss = first_loss if first_loss is not None else last_loss
            if record["step"] % 10 == 0 or record["step"] == record.get("max_steps"):
                sys.stdout.write(
                    f"  step {record['step']:>4}/{record.get('max_steps')}  loss {last_loss:.4f}  "
                    f"{record.get('tokens_per_s', 0):,.0f} tokens/s\n"
                )
                sys.stdout.flush()
        state = reconcile(run)
        if state.get("status") in FINAL:
            break
        time.sleep(0.5)
    if state.get("status") != "completed":
        raise FtuiError(
            f"the demo run ended {state.get('status')} ({state.get('failure')})",
            f"see `ftui logs {run.run_id}`",
        )
    sys.stdout.write(
        f"done: loss {first_loss:.3f} -> {last_loss:.3f}; adapter in {run.final}\n"
        f"  chat with it: ftui chat {run.run_id}\n"
    )
    return 0
