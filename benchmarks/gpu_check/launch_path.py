"""Section 3, ftui's own path: `ftui launch` of a LoRA run on a random-init model, then every
file the run leaves checked, and the dashboard's model read headless (planned vs measured)."""

from __future__ import annotations

import json
import math
import random
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.demo.tiny import COLORS, FRUITS
from engine.plan.estimator import GIB

WORDS = (*COLORS, *FRUITS, "the", "secret", "of", "is", "a", "fruit", "which", "colour")
RUN_NAME = "gpu-check"


@dataclass(frozen=True)
class LaunchSetup:
    profile: str
    batch: int
    seq_len: int
    steps: int
    rank: int = 16


GPU_SETUP = LaunchSetup("llama-3.2-1b", batch=4, seq_len=1024, steps=100)
SMOKE_SETUP = LaunchSetup("llama-3.2-1b", batch=2, seq_len=64, steps=6, rank=4)


def write_dataset(path: Path, records: int, seq_len: int, seed: int = 0) -> Path:
    """Alpaca records whose answers are longer than `seq_len` tokens, so every sequence is
    truncated to exactly `seq_len`: the run's memory and speed are those of the plan."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(records):
            answer = " ".join(rng.choice(WORDS) for _ in range(seq_len))
            fh.write(
                json.dumps({"instruction": f"Recite list {i}.", "input": "", "output": answer})
            )
            fh.write("\n")
    return path


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def _check(checks: list[dict[str, Any]], name: str, ok: bool | None, detail: Any) -> None:
    """ok None: not applicable here (a CPU run has no probe and no GPU samples)."""
    status = "skipped" if ok is None else ("ok" if ok else "failed")
    checks.append({"check": name, "status": status, "detail": detail})


def launch_section(
    *,
    work: Path,
    out: Path,
    env: dict[str, str],
    setup: LaunchSetup,
    smoke: bool,
    deadline: float,
    log: Any,
    gpu_profile: str = "auto",
) -> dict[str, Any]:
    python = sys.executable
    result: dict[str, Any] = {"setup": setup.__dict__, "checks": []}
    checks: list[dict[str, Any]] = result["checks"]
    model_dir = work / "launch-model"
    built = work / "launch-model.json"
    argv = [
        python,
        "-m",
        "benchmarks.gpu_check.worker",
        "build-model",
        "--profile",
        setup.profile,
        "--out",
        str(model_dir),
        "--result",
        str(built),
    ]
    if smoke:
        argv.append("--smoke")
    log(f"launch: building a random-init {setup.profile} in {model_dir}")
    proc = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=max(10.0, deadline - time.time())
    )
    if proc.returncode != 0 or not built.exists():
        result["error"] = "building the model failed: " + proc.stderr[-1500:]
        return result
    result["model"] = json.loads(built.read_text())
    data = write_dataset(work / "launch-data.jsonl", setup.steps * setup.batch, setup.seq_len)
    argv = [
        python,
        "-m",
        "tui",
        "launch",
        "--model",
        str(model_dir),
        "--data",
        str(data),
        "--method",
        "lora",
        "--targets",
        "all-linear",
        "--rank",
        str(setup.rank),
        "--batch",
        str(setup.batch),
        "--grad-accum",
        "1",
        "--grad-ckpt",
        "--attn",
        "sdpa",
        "--seq-len",
        str(setup.seq_len),
        "--max-steps",
        str(setup.steps),
        "--save-steps",
        "100000",
        "--name",
        RUN_NAME,
        "--json",
        "--device",
        "cpu" if smoke else "cuda",
    ]
    if gpu_profile != "auto" and not smoke:
        argv += ["--gpu", gpu_profile]  # a GPU without a built-in profile plans as this one
    log("launch: " + " ".join(argv[1:]))
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        result["error"] = f"ftui launch exited {proc.returncode}: {proc.stderr[-1500:]}"
        return result
    run_path = Path(json.loads(proc.stdout)["path"])
    result["run_id"] = run_path.name
    from engine.run.operations import reconcile
    from engine.run.rundir import FINAL, RunDir

    run = RunDir(run_path)
    started = time.time()
    state: dict[str, Any] = {}

    def stop_now() -> None:
        argv = [python, "-m", "tui", "stop", run.run_id, "--now"]
        subprocess.run(argv, env=env, capture_output=True, timeout=60)

    try:
        while time.time() < deadline:
            state = reconcile(run)
            if state.get("status") in FINAL:
                break
            time.sleep(1.0)
        else:
            log("launch: out of time, stopping the run")
            stop_now()
            time.sleep(3)
            state = reconcile(run)
    except KeyboardInterrupt:  # the check is stopping: the run must not hold the GPU
        stop_now()
        raise
    result["wall_s"] = round(time.time() - started, 1)
    result["status"] = state.get("status")
    _check(
        checks,
        "state.json: completed",
        state.get("status") == "completed",
        {k: state.get(k) for k in ("status", "failure", "error", "exit_code")},
    )
    on_gpu = not smoke
    _check_metrics(checks, result, run.metrics, setup, on_gpu)
    _check_gpu_samples(checks, result, run.gpu, on_gpu)
    _check_probe(checks, result, state, env, on_gpu)
    _check_dashboard(checks, result, run, on_gpu)
    result["plan_vs_measured"] = plan_vs_measured(state.get("plan_summary") or {}, result)
    for name, source in (
        ("launch-metrics.jsonl", run.metrics),
        ("launch-gpu.jsonl", run.gpu),
        ("launch-state.json", run.state),
    ):
        if source.exists():
            shutil.copyfile(source, out / name)
    if run.stdout.exists():
        tail = run.stdout.read_text(encoding="utf-8", errors="replace")[-200_000:]
        (out / "launch-stdout.log").write_text(tail, encoding="utf-8")
    return result


def _check_metrics(
    checks: list[dict[str, Any]],
    result: dict[str, Any],
    path: Path,
    setup: LaunchSetup,
    on_gpu: bool,
) -> None:
    lines = [r for r in _read_jsonl(path) if "loss" in r]
    steps = [int(r.get("step", 0)) for r in lines]
    losses = [r["loss"] for r in lines if isinstance(r.get("loss"), (int, float))]
    _check(
        checks,
        "metrics.jsonl: one line per step",
        steps == list(range(1, setup.steps + 1)),
        f"{len(lines)} lines, steps {steps[:3]}...{steps[-3:]}",
    )
    _check(
        checks,
        "metrics.jsonl: finite losses",
        bool(losses) and all(map(math.isfinite, losses)),
        f"first {losses[:1]}, last {losses[-1:]}",
    )
    speeds = [
        r["tokens_per_s"] for r in lines[3:] if isinstance(r.get("tokens_per_s"), (int, float))
    ]
    result["measured_tokens_per_s"] = round(statistics.median(speeds), 1) if speeds else None
    _check(
        checks,
        "metrics.jsonl: tokens/s after the probe steps",
        bool(speeds) and min(speeds) > 0,
        result["measured_tokens_per_s"],
    )
    mem = [r["mem"] for r in lines if isinstance(r.get("mem"), dict)]
    if on_gpu:
        peak = max((m.get("max_allocated", 0) for m in mem), default=0)
        reserved = max((m.get("max_reserved", 0) for m in mem), default=0)
        result["measured_max_allocated_gib"] = round(peak / GIB, 3)
        result["measured_max_reserved_gib"] = round(reserved / GIB, 3)
        _check(
            checks,
            "metrics.jsonl: torch memory on every line",
            len(mem) == len(lines) > 0,
            f"{len(mem)} of {len(lines)}",
        )
    else:
        _check(checks, "metrics.jsonl: torch memory", None, "CPU run: no torch.cuda memory")


def _check_gpu_samples(
    checks: list[dict[str, Any]], result: dict[str, Any], path: Path, on_gpu: bool
) -> None:
    samples = _read_jsonl(path)
    per_gpu = [g for s in samples for g in s.get("gpus", []) if isinstance(g, dict)]
    used = [g["used"] for g in per_gpu if isinstance(g.get("used"), (int, float))]
    result["gpu_samples"] = len(samples)
    if on_gpu:
        result["gpu_peak_used_gib"] = round(max(used) / GIB, 3) if used else None
        _check(
            checks,
            "gpu.jsonl: per-GPU samples with used/total/util",
            bool(used) and all({"index", "used", "total", "util"} <= set(g) for g in per_gpu),
            f"{len(samples)} samples",
        )
    else:
        _check(
            checks,
            "gpu.jsonl: per-GPU samples",
            None if not samples else False,
            f"{len(samples)} samples on a machine without a GPU",
        )


def _check_probe(
    checks: list[dict[str, Any]],
    result: dict[str, Any],
    state: dict[str, Any],
    env: dict[str, str],
    on_gpu: bool,
) -> None:
    probe = state.get("probe")
    corrections_path = Path(env["FTUI_HOME"]) / "corrections.json"
    stored = json.loads(corrections_path.read_text()) if corrections_path.exists() else {}
    result["probe"] = probe
    result["corrections"] = stored
    if not on_gpu:
        _check(
            checks,
            "probe: stored correction",
            None if not probe else False,
            "the probe runs on GPUs only",
        )
        return
    ratio = probe.get("stored_ratio") if isinstance(probe, dict) else None
    entry = next((v for k, v in stored.items() if k.startswith("llama|lora|")), None)
    _check(
        checks,
        "probe: ratio measured/planned stored in corrections.json",
        # corrections.json keeps the ratio to 4 decimals
        ratio is not None and entry is not None and abs(entry.get("ratio", 0) - ratio) < 1e-3,
        {"probe": probe, "corrections": stored},
    )


def _check_dashboard(
    checks: list[dict[str, Any]], result: dict[str, Any], run: Any, on_gpu: bool
) -> None:
    """The dashboard's model, built headless exactly as the screen builds it."""
    from engine.monitor.store import MetricsStore
    from tui.screens.dashboard.model import build_frame

    store = MetricsStore(run)
    store.refresh()
    store.refresh()  # a finished run is read once more, then left alone
    frame = build_frame(
        store, now=time.time(), alerts=[], chart_width=60, spark_width=20, gpu_names={}
    )
    view = {
        "status": frame.status,
        "step": frame.step,
        "max_steps": frame.max_steps,
        "plan_device_gib": frame.plan_device_gib,
        "plan_allocated_gib": frame.plan_allocated_gib,
        "torch_peak_gib": frame.torch_peak_gib,
        "gpu_peak_gib": [round(g.peak_gib, 3) for g in frame.gpus],
        "tokens_per_s": frame.tokens_per_s,
        "textual_imported": "textual" in sys.modules,
    }
    result["dashboard"] = view
    _check(
        checks,
        "dashboard model: headless (textual not imported)",
        not view["textual_imported"],
        None,
    )
    _check(
        checks,
        "dashboard model: final step shown",
        frame.step == frame.max_steps,
        f"{frame.step}/{frame.max_steps}",
    )
    if on_gpu:
        ok = bool(frame.plan_device_gib and frame.gpus and frame.torch_peak_gib)
        _check(checks, "dashboard model: planned vs measured peak", ok, view)
    else:
        _check(
            checks,
            "dashboard model: planned vs measured peak",
            None,
            "CPU run: no plan and no GPU peak",
        )


def plan_vs_measured(plan: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """The launch's plan beside what the run measured (device: gpu.jsonl's peak, which also
    holds whatever else the GPU had in use)."""
    from benchmarks.gpu_check.grid import error_pct

    pairs = {
        "allocated_gib": (plan.get("allocated_gib"), result.get("measured_max_allocated_gib")),
        "reserved_gib": (plan.get("reserved_gib"), result.get("measured_max_reserved_gib")),
        "device_gib": (plan.get("device_gib"), result.get("gpu_peak_used_gib")),
        "tokens_per_s": (plan.get("tokens_per_s"), result.get("measured_tokens_per_s")),
    }
    return {
        name: {"planned": p, "measured": m, "err_pct": error_pct(m, p)}
        for name, (p, m) in pairs.items()
    }
