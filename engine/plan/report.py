"""The `ftui plan --json` contract: one object other tools can rely on."""

from __future__ import annotations

from typing import Any

from engine.data.stats import LengthStats
from engine.plan.planner import Candidate, Plan


def candidate_to_dict(c: Candidate, plan: Plan) -> dict[str, Any]:
    machine = plan.request.machine
    config = c.config.to_dict()
    config["gpu"] = machine.gpu.id
    memory = c.memory.to_dict()
    memory["fits"] = c.fits
    memory["limit_gib"] = round(plan.request.headroom * machine.memory_bytes / 1024**3, 3)
    memory["host"]["node_ram_gib"] = round(machine.node_ram_bytes(c.config.num_gpus) / 1024**3, 2)
    memory["host"]["fits"] = c.host_fits
    return {
        "config": config,
        "memory": memory,
        "fits": c.fits,
        "gpu": {**machine.to_dict(), "count": c.config.num_gpus},
        "throughput_tokens_per_s": round(c.tokens_per_s, 1),
        # Likely range (the speed model's residual band, p10-p90 of measured/predicted).
        "throughput_band_tokens_per_s": [round(v, 1) for v in c.tokens_per_s_band],
        "eta_s": round(c.eta_s, 1),
        "eta_band_s": [round(v, 1) for v in c.eta_band],
        "cost_usd": round(c.cost_usd, 2),
        "cost_band_usd": [round(v, 2) for v in c.cost_band],
        # measured/planned speed of an earlier run of this kind, already applied (or null)
        "speed_correction": c.speed_correction,
        "quality_risk": c.risk,
    }


def plan_to_dict(
    plan: Plan, stats: LengthStats | None = None, dry: Any | None = None
) -> dict[str, Any]:
    arch = plan.request.arch
    chosen = plan.best or (plan.alternatives[0] if plan.alternatives else None)
    params = chosen.memory.params if chosen else None
    out: dict[str, Any] = {
        "mode": "recommend" if plan.recommending else "estimate",
        "model": {
            "name": arch.name,
            "hf_id": arch.hf_id,
            "source": arch.source,
            "params": params.total if params else None,
            "trainable_params": params.trainable if params else None,
            "architecture": arch.to_dict(),
        },
        "fits": bool(plan.best and plan.best.fits),
        "candidates_evaluated": plan.evaluated,
        "headroom": plan.request.headroom,
        "train_tokens_per_epoch": plan.request.train_tokens,
        "epochs": plan.request.epochs,
        "suggestions": list(plan.suggestions),
    }
    if chosen is not None:
        out.update(candidate_to_dict(chosen, plan))
    out["fits"] = bool(plan.best and plan.best.fits)
    out["alternatives"] = [candidate_to_dict(c, plan) for c in plan.alternatives if c is not chosen]
    if stats is not None:
        out["dataset"] = stats.to_dict()
    if dry is not None:
        dry_dict = dry.to_dict()
        if chosen is not None and "declined" not in dry_dict:
            analytic = chosen.memory.allocated_bytes
            dry_dict["analytic_allocated_gib"] = round(analytic / 1024**3, 3)
            dry_dict["difference"] = round(
                (analytic - dry.peak_allocated_bytes) / max(dry.peak_allocated_bytes, 1), 4
            )
        out["dry_run"] = dry_dict
    return out
