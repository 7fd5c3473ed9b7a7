"""Measured corrections to the estimator, remembered per setup.

A probe (a few real steps on the GPU before a long run) measures torch's peak; the ratio
measured / predicted is stored under (architecture, method, GPU type, attention) in
`$FTUI_HOME/corrections.json` and multiplies later estimates of the same setup.
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
    path = _path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".corrections.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
    os.replace(tmp, path)
    return ratio
