"""`ftui plan`: flags -> PlanRequest -> plan -> JSON or a Rich report."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from engine.errors import FtuiError
from engine.run.spec import REPORT_TO
from engine.training_config import (
    ATTENTIONS,
    DTYPES,
    LORA_INITS,
    METHODS,
    OFFLOADS,
    OPTIMIZERS,
    REFERENCES,
    SHARDINGS,
    STAGES,
    ConfigError,
    TrainingConfig,
)
from tui.cli.output import emit_json


def add_knob_arguments(p: argparse.ArgumentParser) -> None:
    """The planner's knobs, shared by `plan` and `launch`."""
    p.add_argument("--stage", choices=STAGES, help="what to train for (default sft)")
    p.add_argument("--reference", choices=REFERENCES,
                   help="dpo/kto, full fine-tune: a frozen copy of the model (auto) or "
                   "reference log-probs computed before training (precompute)")  # fmt: skip
    p.add_argument("--method", choices=(*METHODS, "auto"), default="auto")
    p.add_argument("--gpu", default="auto", help="GPU profile to plan for (default: detected)")
    p.add_argument("--num-gpus", type=int, help="GPUs to use (default: all of the machine's)")
    p.add_argument("--simulate", metavar="SPEC", default=argparse.SUPPRESS, help="e.g. h100x8")
    p.add_argument("--seq-len", type=int, help="sequence length (default: from --dataset, or 2048)")
    p.add_argument("--batch", type=int, help="micro-batch per GPU")
    p.add_argument("--grad-accum", type=int, help="gradient accumulation steps")
    p.add_argument("--rank", type=int, help="LoRA rank (default 16)")
    p.add_argument("--alpha", type=int, help="LoRA alpha (default 2 x rank)")
    p.add_argument("--targets", help="all-linear, or a comma list such as q_proj,v_proj")
    p.add_argument("--dora", action="store_true", default=None, help="DoRA instead of LoRA")
    p.add_argument("--rslora", action="store_true", default=None, help="LoRA scaled alpha/sqrt(r)")
    p.add_argument("--lora-plus-ratio", type=float, metavar="R",
                   help="LoRA+: B's learning rate is R x A's (e.g. 16)")  # fmt: skip
    p.add_argument("--base-bits", type=int, choices=(4, 8, 16),
                   help="8: LoRA on an LLM.int8 base (4 is --method qlora)")  # fmt: skip
    p.add_argument("--virtual-tokens", type=int, metavar="N",
                   help="prefix/prompt/ptuning/llama-adapter: trained tokens (20)")  # fmt: skip
    p.add_argument("--trainable-layers", type=int, metavar="N",
                   help="freeze: the last N decoder layers train (default 2)")  # fmt: skip
    p.add_argument("--train-embeddings", action="store_true", default=None,
                   help="freeze: embeddings and lm_head train too")  # fmt: skip
    ckpt = p.add_mutually_exclusive_group()
    ckpt.add_argument("--grad-ckpt", dest="grad_ckpt", action="store_true", default=None)
    ckpt.add_argument("--no-grad-ckpt", dest="grad_ckpt", action="store_false")
    p.add_argument("--attn", choices=ATTENTIONS)
    p.add_argument("--dtype", choices=DTYPES)
    p.add_argument("--pure-bf16", action="store_true", default=None, help="full: no fp32 master")
    p.add_argument("--optim", choices=OPTIMIZERS)
    p.add_argument("--sharding", choices=SHARDINGS)
    p.add_argument("--offload", choices=OFFLOADS)
    p.add_argument("--packing", action="store_true", default=None)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--headroom", type=float, default=0.90, help="usable share of GPU memory")
    p.add_argument(
        "--host-ram",
        type=float,
        metavar="GIB",
        help="CPU RAM of one node, GiB (default: detected, or typical for the GPU profile)",
    )


def add_plan_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "plan",
        help="recommend (or estimate) a fine-tuning setup: memory per GPU, speed, ETA, cost",
        description="Recommends the fastest setup that fits when knobs are left open; "
        "estimates one setup when method, batch and --grad-ckpt/--no-grad-ckpt are pinned.",
    )
    p.add_argument("--model", required=True, help="profile name, local dir or HF-cache model")
    add_knob_arguments(p)
    p.add_argument("--init", dest="lora_init", choices=LORA_INITS[1:],
                   help="LoRA initialisation (default: PEFT's; B = 0)")  # fmt: skip
    p.add_argument("--rope-scaling", type=float, metavar="FACTOR", help="allow seq-len beyond the "
                   "model's max positions by this RoPE scaling factor")  # fmt: skip
    p.add_argument("--dataset", type=Path, help="JSON/JSONL file: lengths drive seq-len and ETA")
    p.add_argument("--effective-batch", type=int, help="sequences per optimizer step (default 16)")
    p.add_argument("--train-tokens", type=int, help="tokens per epoch without --dataset (10M)")
    p.add_argument("--dry-run", action="store_true", help="also run the fake-tensor dry run")
    p.add_argument("--report-to", choices=REPORT_TO, default="none",
                   help="the run's tracker: checked now as launch checks it")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_plan)
    return p


_KNOB_FLAGS = (
    "stage", "reference", "method", "seq_len", "batch", "grad_accum", "rank", "alpha", "dora",
    "grad_ckpt", "attn", "dtype", "pure_bf16", "optim", "sharding", "offload", "packing",
    "num_gpus", "rslora", "lora_plus_ratio", "base_bits", "virtual_tokens", "trainable_layers",
    "train_embeddings", "lora_init",
)  # fmt: skip


def pinned_knobs(args: argparse.Namespace) -> dict[str, Any]:
    pinned: dict[str, Any] = {}
    for name in _KNOB_FLAGS:
        value = getattr(args, name, None)
        if value is None or (name == "method" and value == "auto"):
            continue
        pinned[name] = value
    if args.targets:
        pinned["targets"] = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    if "rank" in pinned and "alpha" not in pinned:
        pinned["alpha"] = 2 * pinned["rank"]
    # Validate what was pinned on its own first: the error names the flag, not a combination.
    probe = {k: v for k, v in pinned.items() if k in TrainingConfig.field_names()}
    if probe.get("method") == "prefix":
        probe.setdefault("grad_ckpt", False)  # the planner tries only what prefix can take
    TrainingConfig(**{**probe, "method": probe.get("method", "lora")}).validate()
    return pinned


def _check_seq_len(arch: Any, seq_len: int, rope_scaling: float | None) -> None:
    max_pos = arch.max_positions
    if max_pos is None or seq_len <= max_pos:
        return
    if rope_scaling and seq_len <= max_pos * rope_scaling:
        return
    raise ConfigError(
        f"--seq-len {seq_len} is beyond {arch.name}'s max_position_embeddings ({max_pos})",
        f"use --seq-len {max_pos} or less, or extend the context with --rope-scaling "
        f"{-(-seq_len // max_pos)} (RoPE scaling; quality beyond the trained length is not "
        "guaranteed)",
    )


def cmd_plan(args: argparse.Namespace) -> int:
    from engine.data.stats import estimate_lengths
    from engine.models import resolve_model
    from engine.plan.planner import DEFAULT_TRAIN_TOKENS, PlanRequest, plan, resolve_machine

    if not 0.1 <= args.headroom <= 1.0:
        raise FtuiError(f"--headroom {args.headroom} is not a share", "use e.g. --headroom 0.9")
    if not (math.isfinite(args.epochs) and args.epochs > 0):
        raise FtuiError(f"--epochs {args.epochs} is not a positive number", "e.g. --epochs 3")
    if args.rope_scaling is not None and not (
        math.isfinite(args.rope_scaling) and args.rope_scaling >= 1
    ):
        raise FtuiError(
            f"--rope-scaling {args.rope_scaling}: a RoPE scaling factor stretches the context, "
            "so it is 1 or more",
            "e.g. --rope-scaling 2 to double the model's max positions, or leave it out",
        )
    if args.effective_batch is not None and args.effective_batch < 1:
        raise FtuiError(
            f"--effective-batch must be at least 1 (got {args.effective_batch})",
            "e.g. --effective-batch 16",
        )
    arch = resolve_model(args.model)
    pinned = pinned_knobs(args)
    from engine.plan.methods import (
        check_architecture,
        check_dora_on_experts,
        check_fused_targets,
    )

    check_architecture(pinned.get("method", "auto"), arch.config)
    targets = pinned.get("targets") or TrainingConfig().targets
    check_dora_on_experts(arch, bool(pinned.get("dora")), tuple(targets))
    check_fused_targets(arch, tuple(targets))
    machine = resolve_machine(
        gpu=args.gpu,
        num_gpus=args.num_gpus,
        simulate=getattr(args, "simulate", None),
        host_ram_gib=args.host_ram,
    )
    if args.num_gpus is not None and args.num_gpus > machine.count and machine.detected:
        raise FtuiError(
            f"--num-gpus {args.num_gpus}: this machine has {machine.count} {machine.gpu.name}",
            f"use --num-gpus {machine.count} or less, or plan with --gpu/--simulate",
        )
    pinned.setdefault("num_gpus", machine.count)
    stats = None
    if args.train_tokens is not None and args.train_tokens < 1:
        raise FtuiError(
            f"--train-tokens must be at least 1 (got {args.train_tokens})",
            "e.g. --train-tokens 10000000, or pass --dataset to count them",
        )
    train_tokens = args.train_tokens or DEFAULT_TRAIN_TOKENS
    if args.dataset is not None:
        stats, _lengths = estimate_lengths(args.dataset, model=args.model)
        train_tokens = stats.total_tokens
        if "seq_len" not in pinned:
            wanted = max(256, -(-stats.p99 // 256) * 256)
            pinned["seq_len"] = min(wanted, arch.max_positions or wanted)
    seq_len = int(pinned.get("seq_len", 2048))
    if "seq_len" not in pinned and arch.max_positions:
        seq_len = min(seq_len, arch.max_positions)
        pinned["seq_len"] = seq_len
    _check_seq_len(arch, seq_len, args.rope_scaling)
    request = PlanRequest(
        arch=arch,
        machine=machine,
        pinned=pinned,
        headroom=args.headroom,
        train_tokens=train_tokens,
        epochs=args.epochs,
        effective_batch=args.effective_batch,
    )
    result = plan(request)
    dry = None
    if args.dry_run and (result.best or result.alternatives):
        from engine.plan.dryrun.entry import dry_run_or_decline

        target = result.best or result.alternatives[0]
        dry = dry_run_or_decline(arch, target.config)
    from engine.plan.report import plan_to_dict
    from tui.cli.render_plan import print_plan

    tracker = tracker_check(args.report_to)
    if args.json:
        emit_json({**plan_to_dict(result, stats, dry), "report_to": tracker})
    else:
        print_plan(result, stats, dry)
        print_tracker(tracker)
    return 0 if (result.best is not None and result.best.fits) else 1


def tracker_check(report_to: str) -> dict[str, Any]:
    """`--report-to` as `ftui launch` checks it before a run: its package is installed and, for
    the hosted trackers, logged in or offline. Ready, or the one message and its fix."""
    from engine.run.preflight import check_tracker

    out: dict[str, Any] = {"tracker": report_to, "ready": True, "problem": None, "fix": None}
    try:
        check_tracker(report_to)
    except FtuiError as error:
        out.update(ready=False, problem=error.message, fix=error.fix)
    return out


def print_tracker(tracker: dict[str, Any]) -> None:
    from rich.console import Console

    if tracker["tracker"] == "none":
        return
    console = Console()
    if tracker["ready"]:
        console.print(
            f"tracker: {tracker['tracker']} ready (launch with --report-to {tracker['tracker']})"
        )
    else:
        console.print(f"[yellow]tracker: {tracker['problem']}[/]\n  fix: {tracker['fix']}")
