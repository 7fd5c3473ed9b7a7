"""Money on the command line: the budget flags, the price a launch fixes in the spec (with the
plan's cost at that price), and `ftui status`'s cost lines (engine/run/cost.py computes)."""

from __future__ import annotations

import argparse
from typing import Any

from engine.run.spec import RunSpec


def add_budget_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-cost",
        type=float,
        metavar="USD",
        help="stop (checkpoint, resumable) when the run has cost this much",
    )
    parser.add_argument(
        "--max-hours",
        type=float,
        metavar="H",
        help="stop (checkpoint, resumable) after this many hours of wall time",
    )


def priced(spec: RunSpec, plan_summary: dict[str, Any], given: float | None) -> RunSpec:
    """The run's price per GPU-hour (--price, config.toml, the GPU profile) in its spec, and
    the plan's cost at that price in `plan_summary`."""
    from dataclasses import replace

    from engine.run.cost import resolve_price

    if spec.budget.price is not None and given is None:
        return spec  # a spec file with its own price
    if given is not None and not (given >= 0 and given != float("inf")):
        replace(spec, budget=replace(spec.budget, price=given)).validate()  # names the flag
    price, source = resolve_price(plan_summary.get("gpu"), given=given, on_cpu=spec.device == "cpu")
    if price is not None:
        gpus = spec.training.num_gpus * spec.distributed.nodes
        for key, cost_key in (("eta_s", "cost_usd"), ("eta_band_s", "cost_band_usd")):
            eta = plan_summary.get(key)
            if isinstance(eta, (int, float)):
                plan_summary[cost_key] = round(eta / 3600 * price * gpus, 4)
            elif isinstance(eta, list):
                plan_summary[cost_key] = [round(e / 3600 * price * gpus, 4) for e in eta]
    budget = replace(spec.budget, price=price, price_source=source)
    return replace(spec, budget=budget).validate()


def cost_lines(cost: Any, *, final: bool) -> list[str]:
    """`ftui status`'s money: so far, projected (measured pace) and the plan's, and the caps."""
    from engine.humanize import duration
    from engine.run.cost import money

    if cost.price_per_gpu_hour is None:
        line = f"  cost: no price (ran {duration(cost.elapsed_s)}; launch with --price USD)"
    else:
        gpus = f"{cost.gpus} GPU" + ("s" if cost.gpus != 1 else "")
        line = (
            f"  cost {money(cost.spent_usd)} {'in all' if final else 'so far'} "
            f"({duration(cost.elapsed_s)} × {gpus} × {money(cost.price_per_gpu_hour)}/GPU-h)"
        )
        if not final:
            line += f", projected {money(cost.projected_usd)}"
            if cost.projected_s is not None:
                line += f" in {duration(cost.projected_s)}"
    if cost.plan_usd is not None:
        band = cost.plan_band_usd
        line += f"; plan {money(cost.plan_usd)}" + (
            f" ({money(band[0])}–{money(band[1])})" if band else ""
        )
    out = [line]
    caps = []
    if cost.max_cost is not None:
        caps.append(f"--max-cost {money(cost.max_cost)}")
    if cost.max_hours is not None:
        caps.append(f"--max-hours {cost.max_hours:g}")
    if caps:
        out.append(f"  caps: {', '.join(caps)}")
    return out
