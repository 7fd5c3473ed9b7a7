"""The dry run (tier 2) beside the analytic estimate (tier 1) on a chosen set of setups.

Usage: python benchmarks/dryrun_vs_analytic.py [--quick]
Prints one row per setup: allocated peak by both tiers, where each puts the peak, and the
difference. The same set (minus the slow ones with --quick) is checked in
tests/engine/test_dryrun_agreement.py.
"""

from __future__ import annotations

import argparse
import time

from engine.models import resolve_model
from engine.plan.dryrun.entry import dry_run
from engine.plan.estimator import GIB, estimate_memory
from engine.training_config import TrainingConfig

QUICK = [
    ("qwen2.5-0.5b", TrainingConfig(method="lora", seq_len=1024, batch=2)),
    ("qwen2.5-0.5b", TrainingConfig(method="lora", seq_len=1024, batch=2, grad_ckpt=False)),
    ("qwen2.5-0.5b", TrainingConfig(method="full", pure_bf16=True, seq_len=512, batch=2)),
    ("qwen2.5-0.5b", TrainingConfig(method="qlora", seq_len=1024, batch=2)),
    ("llama-3.2-1b", TrainingConfig(method="lora", seq_len=2048, batch=1)),
    ("llama-3.2-1b", TrainingConfig(method="lora", targets=("q_proj", "v_proj"), rank=64,
                                    seq_len=1024, batch=2, grad_ckpt=False, attn="eager")),
]  # fmt: skip
SLOW = [
    ("llama-3.1-8b", TrainingConfig(method="lora", seq_len=2048, batch=1)),
    ("llama-3.1-8b", TrainingConfig(method="qlora", seq_len=2048, batch=2)),
    ("llama-3.1-8b", TrainingConfig(method="full", pure_bf16=True, seq_len=2048, batch=1)),
]


def compare(model: str, config: TrainingConfig) -> tuple[float, float, str, str, float]:
    arch = resolve_model(model)
    analytic = estimate_memory(arch, config)
    start = time.perf_counter()
    dry = dry_run(arch, config)
    seconds = time.perf_counter() - start
    return (
        analytic.allocated_bytes / GIB,
        dry.peak_allocated_bytes / GIB,
        analytic.peak_phase,
        dry.peak_phase,
        seconds,
    )


def describe(config: TrainingConfig) -> str:
    parts = [config.method]
    if config.is_peft:
        parts.append(f"r{config.rank} {'+'.join(config.targets)}")
    parts.append(f"b{config.batch}x{config.seq_len}")
    parts.append("ckpt" if config.grad_ckpt else "no ckpt")
    if config.attn != "sdpa":
        parts.append(config.attn)
    return " ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    setups = QUICK if parser.parse_args().quick else QUICK + SLOW
    header = ("model", "setup", "analytic GiB", "dry run GiB", "difference",
              "peak (analytic / dry)", "dry-run time")  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|---" * len(header) + "|")
    for model, config in setups:
        a, d, pa, pd, s = compare(model, config)
        cells = (model, describe(config), f"{a:.2f}", f"{d:.2f}", f"{(a - d) / d:+.1%}",
                 f"{pa} / {pd}", f"{s:.1f} s")  # fmt: skip
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
