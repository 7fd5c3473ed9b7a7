"""`ftui doctor`: is this machine ready to fine-tune? Each line ok / warn / missing, with the fix.

Reads package versions from metadata and files only: it never imports torch or transformers,
so it answers in well under a second even on a slow disk.
"""

from __future__ import annotations

import re
import sys
from dataclasses import asdict, dataclass
from importlib import metadata, util
from pathlib import Path
from typing import Any

from engine.machine.hardware import GIB, MachineSnapshot
from engine.paths import hf_hub_cache, hf_token_configured, runs_root

OK, WARN, MISSING = "ok", "warn", "missing"

# (distribution, what it is for, minimum version we support)
_TRAINING_PACKAGES = (
    ("transformers", "models and the Trainer", "5.0"),
    ("peft", "LoRA / QLoRA adapters", "0.17"),
    ("accelerate", "the `accelerate launch` launcher", "1.10"),
    ("datasets", "dataset loading", "3.0"),
    ("deepspeed", "ZeRO sharding and offload", "0.16"),
    ("bitsandbytes", "QLoRA 4-bit and 8-bit optimizers", "0.45"),
)
MIN_FREE_DISK_GIB = 50.0


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok / warn / missing
    detail: str
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = re.findall(r"\d+", text.split("+")[0])[:3]
    return tuple(int(p) for p in parts)


def torch_cuda_build() -> tuple[str | None, str | None]:
    """(torch version, CUDA version it was built for or None for a CPU build), without importing it.

    torch writes `torch/version.py` at build time with `cuda = '12.6'` or `cuda = None`.
    """
    version = _version("torch")
    if version is None:
        return None, None
    spec = util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return version, None
    for location in spec.submodule_search_locations:
        try:
            text = (Path(location) / "version.py").read_text(encoding="utf-8")
        except OSError:
            continue
        match = re.search(r"^cuda\s*(?::\s*[^=]+)?=\s*['\"]([^'\"]+)['\"]", text, re.MULTILINE)
        return version, match.group(1) if match else None
    return version, None


def run_checks(machine: MachineSnapshot) -> list[Check]:
    checks: list[Check] = []
    py = sys.version_info
    checks.append(
        Check("python", OK, f"{py.major}.{py.minor}.{py.micro} ({sys.executable})")
        if py >= (3, 10)
        else Check("python", MISSING, f"{py.major}.{py.minor}", "install Python 3.10 or newer")
    )

    torch_version, cuda = torch_cuda_build()
    if torch_version is None:
        checks.append(
            Check(
                "torch", MISSING, "not installed", "pip install torch (see the README for CPU/GPU)"
            )
        )
    elif cuda is None and machine.has_gpu:
        checks.append(
            Check(
                "torch",
                WARN,
                f"{torch_version}, a CPU-only build on a machine with NVIDIA GPUs",
                "pip install --force-reinstall torch (the default Linux wheel is built with CUDA)",
            )
        )
    else:
        build = f"CUDA {cuda}" if cuda else "CPU-only build"
        checks.append(Check("torch", OK, f"{torch_version} ({build})"))

    for dist, purpose, minimum in _TRAINING_PACKAGES:
        version = _version(dist)
        if version is None:
            checks.append(
                Check(
                    dist, MISSING, f"not installed ({purpose})", f"pip install '{dist}>={minimum}'"
                )
            )
        elif _version_tuple(version) < _version_tuple(minimum):
            checks.append(
                Check(
                    dist,
                    WARN,
                    f"{version} is older than {minimum}",
                    f"pip install -U '{dist}>={minimum}'",
                )
            )
        else:
            checks.append(Check(dist, OK, version))

    flash = _version("flash_attn") or _version("flash-attn")
    if flash:
        checks.append(Check("flash-attn", OK, flash))
    else:
        checks.append(
            Check(
                "flash-attn",
                WARN,
                "not installed: ftui plans with PyTorch SDPA attention instead",
                "optional, on GPUs of compute capability 8.0+: "
                "pip install flash-attn --no-build-isolation",
            )
        )

    if machine.has_gpu:
        names = ", ".join(sorted({g.name for g in machine.gpus}))
        detail = (
            f"{len(machine.gpus)} GPU(s): {names}; driver {machine.driver_version}, "
            f"CUDA driver API {machine.cuda_driver_version}"
        )
        checks.append(Check("nvidia driver", OK, detail))
        driver_cuda = machine.cuda_driver_version
        if cuda and driver_cuda and _version_tuple(cuda)[:2] > _version_tuple(driver_cuda)[:2]:
            checks.append(
                Check(
                    "cuda compatibility",
                    WARN,
                    f"torch is built for CUDA {cuda} but the driver supports up to "
                    f"{machine.cuda_driver_version}",
                    "update the NVIDIA driver, or install a torch wheel for an older CUDA",
                )
            )
    else:
        checks.append(
            Check(
                "nvidia driver",
                WARN,
                f"no GPU: {machine.no_gpu_reason}",
                "fine for planning: try `ftui plan ... --simulate h100x8`; training needs an "
                "NVIDIA GPU and driver (or runs slowly on CPU)",
            )
        )

    host = machine.host
    if host.disk_free_bytes is None:
        checks.append(Check("disk", WARN, f"cannot read free space at {host.disk_path}"))
    else:
        free_gib = host.disk_free_bytes / GIB
        detail = f"{free_gib:.1f} GiB free at {host.disk_path} (runs go to {runs_root()})"
        if free_gib < MIN_FREE_DISK_GIB:
            checks.append(
                Check(
                    "disk",
                    WARN,
                    detail,
                    "checkpoints of a 7B full fine-tune take ~50 GiB each: free space or set "
                    "FTUI_HOME to a bigger volume",
                )
            )
        else:
            checks.append(Check("disk", OK, detail))

    cache = hf_hub_cache()
    checks.append(Check("hf cache", OK, f"{cache}{'' if cache.exists() else ' (not created yet)'}"))
    if hf_token_configured():
        checks.append(Check("hf token", OK, "configured (not shown)"))
    else:
        checks.append(
            Check(
                "hf token",
                WARN,
                "none configured: gated models (Llama, Gemma, ...) cannot be downloaded",
                "run `hf auth login` or export HF_TOKEN",
            )
        )
    return checks


def doctor_exit_code(checks: list[Check]) -> int:
    """1 when something required is missing, 0 otherwise (warnings do not fail)."""
    return 1 if any(c.status == MISSING for c in checks) else 0
