"""What the check writes: a CSV row per configuration (flushed as it lands), a log, and a JSON
summary rewritten after every section, so a run cut short still leaves what it measured."""

from __future__ import annotations

import csv
import json
import statistics
import time
from pathlib import Path
from typing import Any

CSV_NAME, SUMMARY_NAME, LOG_NAME = "grid.csv", "summary.json", "gpu-check.log"
COLUMNS = (
    "id",
    "model",
    "params",
    "method",
    "targets",
    "rank",
    "seq_len",
    "batch",
    "grad_ckpt",
    "attn",
    "dtype",
    "device",
    "status",
    "error",
    "steps",
    "build_s",
    "wall_s",
    "tokens_per_s",
    "step_s",
    "max_allocated_gib",
    "max_reserved_gib",
    "nvml_used_gib",
    "nvml_process_gib",
    "nvml_baseline_gib",
    "device_gib",
    "cpu_max_rss_gib",
    "pred_allocated_gib",
    "pred_reserved_gib",
    "pred_device_gib",
    "pred_peak_phase",
    "pred_fits",
    "pred_tokens_per_s",
    "err_allocated_pct",
    "err_reserved_pct",
    "err_device_pct",
    "err_tokens_per_s_pct",
    "nvml_error",
)


class Report:
    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.started = time.time()
        self.summary: dict[str, Any] = {"started_at": self.started, "finished": False}
        self.rows: list[dict[str, Any]] = []
        self._log = (out / LOG_NAME).open("a", encoding="utf-8")
        self._csv_file = (out / CSV_NAME).open("w", encoding="utf-8", newline="")
        self._csv = csv.DictWriter(self._csv_file, fieldnames=COLUMNS, extrasaction="ignore")
        self._csv.writeheader()
        self._csv_file.flush()

    def log(self, message: str) -> None:
        line = f"[{time.time() - self.started:7.1f}s] {message}"
        print(line, flush=True)
        self._log.write(line + "\n")
        self._log.flush()

    def add_row(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self._csv.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})
        self._csv_file.flush()

    def section(self, name: str, value: Any) -> None:
        self.summary[name] = value
        self.write_summary()

    def write_summary(self) -> None:
        self.summary["elapsed_s"] = round(time.time() - self.started, 1)
        self.summary["grid_errors"] = grid_errors(self.rows)
        path = self.out / SUMMARY_NAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.summary, indent=2, default=str), encoding="utf-8")
        tmp.replace(path)

    def close(self) -> None:
        self.summary["finished"] = True
        self.write_summary()
        self._csv_file.close()
        self._log.close()


def _median_abs(values: list[Any]) -> float | None:
    numbers = [abs(v) for v in values if isinstance(v, (int, float))]
    return round(statistics.median(numbers), 2) if numbers else None


def grid_errors(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median |error| of the planner's predictions over the rows that ran, per level, and how
    the out-of-memory rows compare with the prediction that they would not fit."""
    ok = [r for r in rows if r.get("status") == "ok"]
    ooms = [r for r in rows if r.get("status") == "oom"]
    levels = ("allocated", "reserved", "device", "tokens_per_s")
    return {
        "rows": len(rows),
        "ok": len(ok),
        "oom": len(ooms),
        "failed": sum(r.get("status") in ("error", "timeout") for r in rows),
        "skipped": sum(str(r.get("status")).startswith("skipped") for r in rows),
        "median_abs_error_pct": {
            lv: _median_abs([r.get(f"err_{lv}_pct") for r in ok]) for lv in levels
        },
        "max_abs_error_pct": {
            lv: max(
                (
                    abs(r[f"err_{lv}_pct"])
                    for r in ok
                    if isinstance(r.get(f"err_{lv}_pct"), (int, float))
                ),
                default=None,
            )
            for lv in levels
        },
        "oom_predicted_not_to_fit": sum(r.get("pred_fits") is False for r in ooms),
        "fit_predicted_oom": [r["id"] for r in ok if r.get("pred_fits") is False],
    }
