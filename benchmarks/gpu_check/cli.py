"""The GPU check's command line and its order of work (see docs/gpu-check.md).

    python -m benchmarks.gpu_check --out DIR [--budget-s 510] [--smoke] [--wheels DIR]

Sections, in order: the machine (seconds), ftui's own launch path (capped), then the grid
until the budget is spent. Every section lands in the summary as soon as it ends.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks.gpu_check.grid import GIB, Row, arch_for, compare, gpu_rows, predict, smoke_rows
from benchmarks.gpu_check.report import Report

REPO = Path(__file__).resolve().parents[2]
PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "datasets",
    "bitsandbytes",
    "deepspeed",
    "textual",
    "nvidia-ml-py",
    "flash-attn",
)
SUMMARY_RESERVE_S = 10.0  # kept back at the end to write the summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/gpu-check", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the CSV, summary and log")
    p.add_argument(
        "--budget-s",
        type=float,
        default=510.0,
        help="wall-clock budget for everything; the grid stops cleanly when it is spent",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny configurations on the CPU: proves the script, measures nothing real",
    )
    p.add_argument("--steps", type=int, help="training steps per grid row (default 8; smoke 4)")
    p.add_argument("--max-rows", type=int, help="run at most this many grid rows")
    p.add_argument("--row-timeout-s", type=float, default=150.0)
    p.add_argument(
        "--launch-cap-s",
        type=float,
        default=210.0,
        help="most of the budget the launch check may take",
    )
    p.add_argument("--skip-launch", action="store_true")
    p.add_argument("--skip-grid", action="store_true")
    p.add_argument(
        "--gpu-profile",
        default="auto",
        help="GPU profile the predictions are for (default: the detected GPU)",
    )
    p.add_argument(
        "--wheels",
        type=Path,
        help="folder of wheels for packages this Python lacks (datasets, bitsandbytes"
        "): installed into a private folder for this check only",
    )
    p.add_argument("--work", type=Path, help="scratch folder (default: a new temporary one)")
    return p.parse_args(argv)


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def install_wheels(wheels: Path, site: Path, log: Any) -> dict[str, Any]:
    """Install the wheels whose package this Python lacks into `site` (never over an
    installed package), without dependencies and without the network."""
    missing, present = [], []
    for wheel in sorted(wheels.glob("*.whl")):
        name = wheel.name.split("-")[0]
        try:
            importlib.metadata.version(name)
            present.append(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(wheel)
    result: dict[str, Any] = {"already_installed": present, "installed": [w.name for w in missing]}
    if missing:
        argv = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-index",
            "--no-deps",
            "--quiet",
            "--target",
            str(site),
            *map(str, missing),
        ]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=180)
        result["pip_exit"] = proc.returncode
        if proc.returncode != 0:
            result["pip_error"] = proc.stderr[-1000:]
    log(f"wheels: installed {result['installed']} (already there: {present})")
    return result


def make_env(work: Path, site: Path | None) -> dict[str, str]:
    paths = [str(REPO), *([str(site)] if site else [])]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths),
        "FTUI_HOME": str(work / "ftui-home"),  # runs and corrections stay in the scratch folder
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    }


def resolve_prediction_machine(name: str, smoke: bool) -> tuple[Any, str]:
    from engine.errors import FtuiError
    from engine.plan.planner import resolve_machine

    if name != "auto":
        return resolve_machine(gpu=name, num_gpus=1), f"profile {name}"
    try:
        return resolve_machine(num_gpus=1), "detected"
    except FtuiError as error:
        if not smoke:
            raise
        return resolve_machine(gpu="h200", num_gpus=1), f"h200 profile ({error.message})"


def nvml_used_bytes() -> int | None:
    from engine.machine.hardware import detect_machine

    snap = detect_machine()
    return snap.gpus[0].memory_used_bytes if snap.gpus else None


def run_row(
    row: Row,
    *,
    args: argparse.Namespace,
    env: dict[str, str],
    work: Path,
    timeout: float,
    steps: int,
    dtype: str,
) -> dict[str, Any]:
    """One configuration in its own process group (a timeout kills all of it)."""
    result_path = work / f"row-{row.id}.json"
    argv = [
        sys.executable,
        "-m",
        "benchmarks.gpu_check.worker",
        "measure",
        "--row",
        json.dumps(row.to_dict()),
        "--result",
        str(result_path),
        "--steps",
        str(steps),
        "--dtype",
        dtype,
        *(["--smoke"] if args.smoke else []),
    ]
    log_path = work / f"row-{row.id}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"status": "timeout", "error": f"no result within {timeout:.0f} s"}
        except KeyboardInterrupt:  # the check is stopping: leave no worker on the GPU
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    if result_path.exists():
        return dict(json.loads(result_path.read_text()))
    tail = log_path.read_text(errors="replace")[-600:]
    return {"status": "error", "error": f"worker exited {code}: {tail}"}


def grid_section(
    report: Report, args: argparse.Namespace, env: dict[str, str], work: Path, deadline: float
) -> dict[str, Any]:
    machine, source = resolve_prediction_machine(args.gpu_profile, args.smoke)
    rows = smoke_rows() if args.smoke else gpu_rows()
    if args.max_rows is not None:
        rows = rows[: args.max_rows]
    steps = args.steps or (4 if args.smoke else 8)
    dtype = "bf16" if machine.gpu.bf16 else "fp16"
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    min_row_s = 5.0 if args.smoke else 30.0
    info = {
        "predictions_for": f"{machine.gpu.id} ({source})",
        "planned_rows": len(rows),
        "steps_per_row": steps,
        "dtype": dtype,
        "stopped_by_budget": False,
    }
    report.log(
        f"grid: {len(rows)} rows, {steps} steps each, predictions for {info['predictions_for']}"
    )
    for i, row in enumerate(rows):
        remaining = deadline - time.time()
        if remaining < min_row_s:
            info["stopped_by_budget"] = True
            report.log(f"grid: budget spent, {len(rows) - i} rows not run")
            break
        arch = arch_for(row.model, args.smoke)
        config = row.training_config(dtype)
        record: dict[str, Any] = {
            **row.to_dict(),
            "id": row.id,
            "dtype": dtype,
            "targets": ",".join(row.targets) if row.method != "full" else "",
            "rank": row.rank if row.method != "full" else None,
        }
        try:
            record.update(predict(arch, config, machine))
        except Exception as exc:  # a planner mid-rewrite must not cost the measurement
            record["pred_error"] = f"{type(exc).__name__}: {exc}"
        if row.method == "qlora" and not has_bnb:
            record["status"] = "skipped: bitsandbytes not installed"
        else:
            baseline = nvml_used_bytes()
            timeout = min(args.row_timeout_s, remaining)
            record.update(
                run_row(
                    row, args=args, env=env, work=work, timeout=timeout, steps=steps, dtype=dtype
                )
            )
            if baseline is not None:
                record["nvml_baseline_gib"] = round(baseline / GIB, 3)
                if record.get("nvml_process_gib") is not None:
                    record["device_gib"] = record["nvml_process_gib"]
                elif record.get("nvml_used_gib") is not None:
                    record["device_gib"] = round(record["nvml_used_gib"] - baseline / GIB, 3)
        record.update(compare(record))
        report.add_row(record)
        report.log(
            f"grid {i + 1}/{len(rows)} {row.id}: {record.get('status')} "
            f"alloc {record.get('max_allocated_gib')} (pred {record.get('pred_allocated_gib')}) "
            f"tok/s {record.get('tokens_per_s')} (pred {record.get('pred_tokens_per_s')})"
            + (f" error {record['error'][:200]}" if record.get("error") else "")
        )
        report.write_summary()
    info["rows_run"] = len(report.rows)
    return info


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.time()
    deadline = start + args.budget_s - SUMMARY_RESERVE_S
    # A SIGTERM (a wrapper's time limit) unwinds like Ctrl-C, so the summary still lands.
    signal.signal(signal.SIGTERM, _interrupt)
    report = Report(args.out)
    work = args.work or Path(tempfile.mkdtemp(prefix="ftui-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    report.summary.update(
        mode="smoke" if args.smoke else "gpu",
        budget_s=args.budget_s,
        argv=sys.argv[1:] if argv is None else argv,
    )
    report.log(
        f"gpu-check {'--smoke ' if args.smoke else ''}budget {args.budget_s:.0f} s, work {work}"
    )
    site = None
    try:
        if args.wheels:
            site = work / "site"
            report.section("wheels", install_wheels(args.wheels, site, report.log))
            sys.path.insert(0, str(site))
            importlib.invalidate_caches()
        env = make_env(work, site)
        os.environ["FTUI_HOME"] = env["FTUI_HOME"]
        report.section("versions", versions())
        _section(report, "machine", lambda: _machine(env, report))
        if not args.skip_launch:
            cap = args.launch_cap_s if not args.smoke else max(args.launch_cap_s, 240.0)
            _section(
                report,
                "launch",
                lambda: _launch(args, env, work, report, min(deadline, time.time() + cap)),
            )
        if not args.skip_grid:
            _section(report, "grid", lambda: grid_section(report, args, env, work, deadline))
    except KeyboardInterrupt:
        report.log("interrupted: writing what was measured")
        report.summary["interrupted"] = True
    finally:
        from engine.plan import planner

        report.summary["throughput_function"] = (
            "engine.plan.planner.throughput_tokens_per_s"
            if hasattr(planner, "throughput_tokens_per_s")
            else "missing: update grid.predicted_tokens_per_s"
        )
        report.log(f"done in {time.time() - start:.0f} s: {report.summary.get('grid_errors')}")
        report.close()
    return 130 if report.summary.get("interrupted") else 0


def _section(report: Report, name: str, body: Any) -> None:
    """Run one section; a crash is recorded and the next section still runs."""
    started = time.time()
    try:
        value = body()
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        report.log(f"{name}: crashed: {type(exc).__name__}: {exc}")
        value = {"crashed": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    if isinstance(value, dict):
        value["section_s"] = round(time.time() - started, 1)
    report.section(name, value)


def _machine(env: dict[str, str], report: Report) -> dict[str, Any]:
    from benchmarks.gpu_check.machine import machine_section

    section = machine_section(env)
    report.log(
        f"machine: {len(section['disagreements'])} disagreement(s) "
        f"{[d['field'] for d in section['disagreements']]}"
    )
    return section


def _launch(
    args: argparse.Namespace, env: dict[str, str], work: Path, report: Report, deadline: float
) -> dict[str, Any]:
    from benchmarks.gpu_check.launch_path import GPU_SETUP, SMOKE_SETUP, launch_section

    if importlib.util.find_spec("datasets") is None:
        report.log("launch: skipped, the datasets package is missing (see docs/gpu-check.md)")
        return {"skipped": "datasets is not installed: ftui's trainer builds datasets.Dataset"}
    setup = SMOKE_SETUP if args.smoke else GPU_SETUP
    result = launch_section(
        work=work,
        out=args.out,
        env=env,
        setup=setup,
        smoke=args.smoke,
        deadline=deadline,
        log=report.log,
        gpu_profile=args.gpu_profile,
    )
    for check in result.get("checks", []):
        report.log(f"launch: {check['status']:7} {check['check']}")
    if result.get("error"):
        report.log(f"launch: {result['error'][:500]}")
    return result
