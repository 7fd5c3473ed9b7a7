"""Measured corrections to the estimator, remembered per setup.

A probe (a few real steps on the GPU before a long run) measures torch's peak; the ratio
measured / predicted is stored under (architecture, method, GPU type, attention) in
`$FTUI_HOME/corrections.json` and multiplies later estimates of the same setup.

Speed works the same way: a running job's measured tokens/s over the plan's is stored under
(architecture, method, GPU type, GPU count) in `$FTUI_HOME/speed_corrections.json`, and the
next plan of that kind multiplies its estimate by it (and says so).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.paths import ftui_home

# A ratio outside this band means the probe measured something else (another process on the
# GPU, a crashed step): it is refused rather than stored.
MIN_RATIO, MAX_RATIO = 0.5, 2.0


@dataclass(frozen=True)
class CorrectionKey:
    model_type: str
    method: str
    gpu: str  # GPU profile id, or the NVML name when no profile matches
    attn: str

    def as_str(self) -> str:
        return f"{self.model_type}|{self.method}|{self.gpu}|{self.attn}"


def _path() -> Path:
    return ftui_home() / "corrections.json"


def load_corrections() -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(_path().read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def correction_for(key: CorrectionKey) -> float:
    entry = load_corrections().get(key.as_str())
    if not entry:
        return 1.0
    ratio = entry.get("ratio", 1.0)
    return float(ratio) if isinstance(ratio, (int, float)) else 1.0


def store_correction(key: CorrectionKey, predicted_bytes: int, measured_bytes: int) -> float:
    """Remember measured/predicted for this setup; returns the stored ratio."""
    if predicted_bytes <= 0 or measured_bytes <= 0:
        raise ValueError("predicted and measured peaks must be positive")
    ratio = measured_bytes / predicted_bytes
    if not MIN_RATIO <= ratio <= MAX_RATIO:
        raise ValueError(f"implausible correction {ratio:.2f} (measured {measured_bytes} bytes)")
    data = load_corrections()
    data[key.as_str()] = {
        "ratio": round(ratio, 4),
        "predicted_bytes": predicted_bytes,
        "measured_bytes": measured_bytes,
        "at": time.time(),
    }
    _write_json(_path(), data)
    return ratio


# -- speed -----------------------------------------------------------------------------------

# A measured speed outside this band of the plan's means the run was not the planned setup
# (another job on the GPU, a throttled card, a different dataset length): not stored.
MIN_SPEED_RATIO, MAX_SPEED_RATIO = 0.2, 5.0


@dataclass(frozen=True)
class SpeedKey:
    """Speed corrections are per (architecture, method, GPU type, GPU count)."""

    model_type: str
    method: str
    gpu: str
    num_gpus: int

    def as_str(self) -> str:
        return f"{self.model_type}|{self.method}|{self.gpu}|{self.num_gpus}"


@dataclass(frozen=True)
class SpeedCorrection:
    ratio: float  # measured / planned tokens/s
    planned_tokens_per_s: float
    measured_tokens_per_s: float
    at: float


def _speed_path() -> Path:
    return ftui_home() / "speed_corrections.json"


def load_speed_corrections() -> dict[str, SpeedCorrection]:
    """Every stored speed correction by key (one read: the planner loads them once per plan)."""
    try:
        data = json.loads(_speed_path().read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    out: dict[str, SpeedCorrection] = {}
    if not isinstance(data, dict):
        return out
    for key, entry in data.items():
        try:
            ratio = float(entry["ratio"])
            out[key] = SpeedCorrection(
                ratio=ratio,
                planned_tokens_per_s=float(entry["planned_tokens_per_s"]),
                measured_tokens_per_s=float(entry["measured_tokens_per_s"]),
                at=float(entry.get("at", 0.0)),
            )
        except (KeyError, TypeError, ValueError):
            continue
    return out


def store_speed_correction(key: SpeedKey, planned: float, measured: float) -> float:
    """Remember measured/planned tokens/s for this setup; returns the stored ratio."""
    if planned <= 0 or measured <= 0:
        raise ValueError("planned and measured tokens/s must be positive")
    ratio = measured / planned
    if not MIN_SPEED_RATIO <= ratio <= MAX_SPEED_RATIO:
        raise ValueError(f"implausible speed correction {ratio:.2f} ({measured:,.0f} tokens/s)")
    path = _speed_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    data[key.as_str()] = {
        "ratio": round(ratio, 4),
        "planned_tokens_per_s": round(planned, 2),
        "measured_tokens_per_s": round(measured, 2),
        "at": time.time(),
    }
    _write_json(path, data)
    return ratio


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
    os.replace(tmp, path)
