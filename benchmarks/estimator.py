"""Speed of the analytic estimator and the planner's full search (one core).

Usage: python benchmarks/estimator.py
"""

from __future__ import annotations

import itertools
import time

from engine.machine.fakenvml import parse_simulate_spec
from engine.models import resolve_model
from engine.plan.estimator import estimate_memory
from engine.plan.planner import Machine, PlanRequest, plan
from engine.plan.throughput import tokens_per_s
from engine.training_config import TrainingConfig


def sweep_configs(n: int) -> list[TrainingConfig]:
    grid = itertools.cycle(
        itertools.product(
            ("full", "lora", "qlora"),
            (1, 2, 4, 8, 16),
            (512, 1024, 2048, 4096, 8192),
            (True, False),
            ("sdpa", "eager"),
            (8, 16, 64),
            (1, 2, 4, 8),
        )
    )
    configs = []
    for method, batch, seq, ckpt, attn, rank, gpus in grid:
        configs.append(
            TrainingConfig(
                method=method,
                batch=batch,
                seq_len=seq,
                grad_ckpt=ckpt,
                attn=attn,
                rank=rank,
                num_gpus=gpus,
                sharding="zero3" if gpus > 1 else "none",
            )
        )
        if len(configs) == n:
            break
    return configs


def main() -> None:
    arch = resolve_model("llama-3.1-8b")
    configs = sweep_configs(10_000)
    estimate_memory(arch, configs[0])  # warm
    start = time.perf_counter()
    for config in configs:
        estimate_memory(arch, config)
    elapsed = time.perf_counter() - start
    print(
        f"analytic estimator: {len(configs):,} estimates in {elapsed:.3f} s "
        f"= {len(configs) / elapsed:,.0f} estimates/s (one core)"
    )
    gpu = parse_simulate_spec("h100")[0]
    tokens_per_s(arch, configs[0], gpu)  # warm
    start = time.perf_counter()
    for config in configs:
        tokens_per_s(arch, config, gpu)
    speed = time.perf_counter() - start
    print(
        f"speed model: {len(configs):,} estimates in {speed:.3f} s "
        f"= {len(configs) / speed:,.0f} estimates/s (one core)"
    )
    both = elapsed + speed
    print(
        f"memory + speed (what the planner scores per setup): "
        f"{len(configs) / both:,.0f} estimates/s (one core)"
    )
    for model, spec in (("llama-3.1-8b", "4090"), ("llama-3.3-70b", "h100x8")):
        profiles = parse_simulate_spec(spec)
        machine = Machine(profiles[0], len(profiles), profiles[0].memory_total_bytes, False)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            result = plan(PlanRequest(arch=resolve_model(model), machine=machine))
            times.append(time.perf_counter() - start)
        print(
            f"planner full search, {model} on {spec}: {result.evaluated} setups in "
            f"{min(times) * 1000:.1f} ms (best of 5)"
        )


if __name__ == "__main__":
    main()
