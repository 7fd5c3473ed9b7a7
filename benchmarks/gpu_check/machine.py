"""Section 1, the machine: what `ftui gpus --json` and `ftui doctor --json` say, beside
`nvidia-smi` and torch, with every field on which they disagree listed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from typing import Any

SMI_FIELDS = (
    "index",
    "name",
    "uuid",
    "memory.total",
    "memory.used",
    "driver_version",
    "power.draw",
    "enforced.power.limit",
    "compute_cap",
)
TORCH_PROBE = """
import json, torch
out = {"torch": torch.__version__, "cuda_build": torch.version.cuda,
       "available": torch.cuda.is_available()}
if out["available"]:
    p = torch.cuda.get_device_properties(0)
    out.update(name=p.name, uuid=str(p.uuid), total_bytes=p.total_memory,
               compute_capability=f"{p.major}.{p.minor}", bf16=torch.cuda.is_bf16_supported())
print(json.dumps(out))
"""
MIB = 1024**2
USED_TOLERANCE_MIB = 256  # memory in use moves between two reads a second apart
POWER_TOLERANCE = 0.25  # power draw moves too; the limit must agree exactly (1 W)


def _run_json(argv: list[str], env: dict[str, str], timeout: float) -> tuple[Any, str | None]:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{argv[-2:]}: {exc}"
    try:
        return json.loads(out.stdout), None
    except json.JSONDecodeError:
        return None, f"exit {out.returncode}: {(out.stderr or out.stdout)[-500:]}"


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None  # "[N/A]", "[Not Supported]"


def nvidia_smi() -> dict[str, Any]:
    """nvidia-smi's query fields per GPU, and the CUDA version from its banner."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"available": False, "reason": "nvidia-smi is not on PATH"}
    try:
        query = subprocess.run(
            [exe, f"--query-gpu={','.join(SMI_FIELDS)}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        banner = subprocess.run([exe], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"available": False, "reason": str(exc)}
    if query.returncode != 0:
        return {"available": False, "reason": (query.stderr or query.stdout).strip()[:300]}
    gpus = []
    for line in query.stdout.strip().splitlines():
        values = [v.strip() for v in line.split(",")]
        gpus.append(dict(zip(SMI_FIELDS, values, strict=False)))
    cuda = re.search(r"CUDA Version:\s*([0-9.]+)", banner)
    return {"available": True, "gpus": gpus, "cuda_version": cuda.group(1) if cuda else None}


def _disagree(field: str, ftui: Any, other: Any, source: str, ok: bool) -> dict[str, Any] | None:
    if ok:
        return None
    return {"field": field, "ftui": ftui, source: other}


def compare(
    gpus: dict[str, Any], smi: dict[str, Any], torch: dict[str, Any]
) -> list[dict[str, Any]]:
    """Every field where ftui's reading differs from nvidia-smi's or torch's."""
    out: list[dict[str, Any] | None] = []
    ftui_gpus = gpus.get("gpus") or []
    smi_gpus = smi.get("gpus") or []
    if len(ftui_gpus) != len(smi_gpus):
        out.append(_disagree("gpu count", len(ftui_gpus), len(smi_gpus), "nvidia_smi", False))
    if smi_gpus:
        first = smi_gpus[0]
        out.append(
            _disagree(
                "driver",
                gpus.get("driver_version"),
                first.get("driver_version"),
                "nvidia_smi",
                gpus.get("driver_version") == first.get("driver_version"),
            )
        )
    if smi.get("cuda_version"):
        mine = gpus.get("cuda_driver_version")
        out.append(
            _disagree(
                "cuda (driver)",
                mine,
                smi["cuda_version"],
                "nvidia_smi",
                str(mine) == smi["cuda_version"],
            )
        )
    for g, s in zip(ftui_gpus, smi_gpus, strict=False):
        i = g.get("index")
        out.append(
            _disagree(
                f"gpu{i} name",
                g.get("name"),
                s.get("name"),
                "nvidia_smi",
                g.get("name") == s.get("name"),
            )
        )
        total = _number(s.get("memory.total", ""))
        mine_total = (g.get("memory_total_bytes") or 0) / MIB
        out.append(
            _disagree(
                f"gpu{i} memory total MiB",
                round(mine_total),
                total,
                "nvidia_smi",
                total is not None and abs(mine_total - total) <= 1,
            )
        )
        used = _number(s.get("memory.used", ""))
        mine_used = (g.get("memory_used_bytes") or 0) / MIB
        out.append(
            _disagree(
                f"gpu{i} memory used MiB",
                round(mine_used),
                used,
                "nvidia_smi",
                used is not None and abs(mine_used - used) <= USED_TOLERANCE_MIB,
            )
        )
        draw, mine_draw = _number(s.get("power.draw", "")), g.get("power_draw_w")
        if draw is not None or mine_draw is not None:
            close = (
                draw is not None
                and mine_draw is not None
                and abs(mine_draw - draw) <= max(20.0, POWER_TOLERANCE * draw)
            )
            out.append(_disagree(f"gpu{i} power draw W", mine_draw, draw, "nvidia_smi", close))
        limit, mine_limit = _number(s.get("enforced.power.limit", "")), g.get("power_limit_w")
        if limit is not None or mine_limit is not None:
            close = limit is not None and mine_limit is not None and abs(mine_limit - limit) <= 1
            out.append(_disagree(f"gpu{i} power limit W", mine_limit, limit, "nvidia_smi", close))
        cc = g.get("compute_capability")
        mine_cc = f"{cc[0]}.{cc[1]}" if isinstance(cc, list) and len(cc) == 2 else cc
        out.append(
            _disagree(
                f"gpu{i} compute capability",
                mine_cc,
                s.get("compute_cap"),
                "nvidia_smi",
                str(mine_cc) == s.get("compute_cap"),
            )
        )
        if i == 0 and torch.get("available"):
            out.append(
                _disagree(
                    "gpu0 bf16",
                    g.get("bf16_supported"),
                    torch.get("bf16"),
                    "torch",
                    g.get("bf16_supported") == torch.get("bf16"),
                )
            )
            out.append(
                _disagree(
                    "gpu0 memory total bytes",
                    g.get("memory_total_bytes"),
                    torch.get("total_bytes"),
                    "torch",
                    abs((g.get("memory_total_bytes") or 0) - torch["total_bytes"]) <= 64 * MIB,
                )
            )
    return [d for d in out if d is not None]


def doctor_summary(doctor: Any) -> dict[str, Any]:
    checks = doctor.get("checks", []) if isinstance(doctor, dict) else []
    return {
        "checks": {c.get("name"): f"{c.get('status')}: {c.get('detail')}" for c in checks},
        "not_ok": [c.get("name") for c in checks if c.get("status") != "ok"],
    }


def machine_section(env: dict[str, str], python: str = sys.executable) -> dict[str, Any]:
    gpus, gpus_error = _run_json([python, "-m", "tui", "gpus", "--json"], env, 60)
    doctor, doctor_error = _run_json([python, "-m", "tui", "doctor", "--json"], env, 60)
    torch, torch_error = _run_json([python, "-c", TORCH_PROBE], env, 120)
    smi = nvidia_smi()
    section: dict[str, Any] = {
        "ftui_gpus": gpus,
        "ftui_doctor": doctor_summary(doctor),
        "nvidia_smi": smi,
        "torch": torch,
        "errors": {
            k: v
            for k, v in (("gpus", gpus_error), ("doctor", doctor_error), ("torch", torch_error))
            if v
        },
    }
    section["disagreements"] = compare(gpus or {}, smi, torch or {})
    return section
