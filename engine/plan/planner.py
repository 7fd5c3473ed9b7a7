"""The planner: search the knobs a user did not pin, keep what fits, rank by speed.

Candidates are scored with the analytic estimator and the speed model (engine.plan.throughput;
microseconds each). Speed is the point estimate, times a measured correction when a run of
the same kind (architecture, method, GPU type, GPU count) has reported its real speed; each
candidate also carries the likely band around it (the speed model's residuals). A candidate
fits when its device-level peak is within `headroom` of the GPU's memory. The best plan is
the fastest that fits; runners-up are the Pareto front over (memory, speed, quality risk of
the method). When nothing fits, `suggestions` says what would.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from engine.models import ModelArch
from engine.plan.corrections import (
    CorrectionKey,
    SpeedCorrection,
    SpeedKey,
    correction_for,
    load_speed_corrections,
)
from engine.plan.estimator import GIB, MemoryEstimate, estimate_memory
from engine.plan.hostmem import HOST_HEADROOM, gpus_per_node, host_ram_fits
from engine.plan.param_targets import lora_param_count
from engine.plan.params import attached_roles, param_roles
from engine.plan.throughput import SPEED_BAND, tokens_per_s
from engine.training_config import ALL_LINEAR, ConfigError, TrainingConfig
from profiles import GpuProfile, gpu_profiles

QUALITY_RISK = {"full": 0, "lora": 1, "qlora": 2}
DEFAULT_EFFECTIVE_BATCH = 16
DEFAULT_TRAIN_TOKENS = 10_000_000
MICRO_BATCHES = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class Machine:
    """The GPUs a plan is for: a profile and how many of it."""

    gpu: GpuProfile
    count: int
    memory_bytes: int  # per GPU, as NVML reports the total
    detected: bool
    # Host RAM of one node: detected here, or `--host-ram`; 0 = the GPU profile's typical
    # RAM per GPU times the GPUs of a node.
    host_ram_bytes: int = 0
    host_ram_source: str = "profile"  # "detected", "--host-ram" or "profile"

    def node_ram_bytes(self, num_gpus: int | None = None) -> int:
        if self.host_ram_bytes > 0:
            return self.host_ram_bytes
        per_gpu = self.gpu.host_ram_gib_per_gpu * GIB
        return int(per_gpu * gpus_per_node(num_gpus or self.count))

    def to_dict(self) -> dict[str, Any]:
        return {
            "host_ram_gib": round(self.node_ram_bytes() / GIB, 2),
            "host_ram_source": self.host_ram_source,
            "id": self.gpu.id,
            "name": self.gpu.name,
            "memory_gib": round(self.memory_bytes / GIB, 2),
            "count": self.count,
            "bf16_tflops": self.gpu.bf16_tflops,
            "price_usd_per_hour": self.gpu.price_usd_per_hour,
            "detected": self.detected,
        }


@dataclass(frozen=True)
class Candidate:
    config: TrainingConfig
    memory: MemoryEstimate
    fits: bool
    tokens_per_s: float  # the point estimate the planner ranks by (the job's total)
    eta_s: float
    cost_usd: float
    # Likely range of tokens/s (low, high): the speed model's residual band around the point.
    tokens_per_s_band: tuple[float, float] = (0.0, 0.0)
    # measured/planned ratio of an earlier run of the same kind, already applied; None if none.
    speed_correction: float | None = None
    # The node's host RAM holds what this setup offloads (`fits` requires it too).
    host_fits: bool = True

    @property
    def risk(self) -> int:
        return QUALITY_RISK.get(self.config.method, 1)  # the PEFT family: as LoRA

    @property
    def eta_band(self) -> tuple[float, float]:
        """(shortest, longest) likely ETA in seconds: the speed band, inverted."""
        low, high = self.tokens_per_s_band
        if low <= 0 or high <= 0:
            return (self.eta_s, self.eta_s)
        return (self.eta_s * self.tokens_per_s / high, self.eta_s * self.tokens_per_s / low)

    @property
    def cost_band(self) -> tuple[float, float]:
        short, long = self.eta_band
        scale = self.cost_usd / self.eta_s if self.eta_s > 0 else 0.0
        return (short * scale, long * scale)


@dataclass
class PlanRequest:
    arch: ModelArch
    machine: Machine
    pinned: dict[str, Any] = field(default_factory=dict)  # TrainingConfig fields the user set
    headroom: float = 0.90
    train_tokens: int = DEFAULT_TRAIN_TOKENS  # tokens per epoch
    epochs: float = 1.0
    effective_batch: int | None = None
    # Measured speed corrections by SpeedKey string; loaded once per plan when None.
    speed_corrections: dict[str, SpeedCorrection] | None = None


@dataclass(frozen=True)
class Plan:
    best: Candidate | None
    alternatives: tuple[Candidate, ...]
    evaluated: int
    recommending: bool
    suggestions: tuple[str, ...]
    request: PlanRequest


# -- throughput ------------------------------------------------------------------------------


def throughput_tokens_per_s(arch: ModelArch, config: TrainingConfig, machine: Machine) -> float:
    """Estimated trained tokens/s across all GPUs, before any measured correction (the speed
    model: engine/plan/throughput.py, docs/estimator.md)."""
    return tokens_per_s(arch, config, machine.gpu)


def speed_key(arch: ModelArch, config: TrainingConfig, machine: Machine) -> SpeedKey:
    return SpeedKey(arch.model_type, config.method, machine.gpu.id, config.num_gpus)


# -- search ----------------------------------------------------------------------------------


def _choices(name: str, pinned: dict[str, Any], options: Iterable[Any]) -> list[Any]:
    return [pinned[name]] if name in pinned else list(options)


def candidate_configs(request: PlanRequest) -> Iterator[TrainingConfig]:
    """Every combination of the unpinned knobs worth trying."""
    pinned = request.pinned
    machine = request.machine
    n_max = machine.count
    dtype = pinned.get("dtype", "bf16" if machine.gpu.bf16 else "fp16")
    seq_len = int(pinned.get("seq_len", 2048))
    effective = request.effective_batch or DEFAULT_EFFECTIVE_BATCH
    methods = _choices("method", pinned, ("full", "lora", "qlora"))
    gpu_counts = _choices("num_gpus", pinned, (n_max,))
    roles = attached_roles(request.arch)
    # a model class without gradient checkpointing (CTRL, CPM-Ant) would fail at the Trainer's
    # set-up with it: never recommended (pinned, the estimate leaves it out and says so)
    checkpointing = (True, False) if roles is None or roles.checkpointing else (False,)
    for method, num_gpus, grad_ckpt in itertools.product(
        methods, gpu_counts, _choices("grad_ckpt", pinned, checkpointing)
    ):
        shardings = ("none", "zero2", "zero3", "fsdp") if num_gpus > 1 else ("none",)
        for sharding in _choices("sharding", pinned, shardings):
            offloads: tuple[str, ...] = ("none",)
            if sharding in ("zero2", "zero3"):
                offloads = ("none", "optimizer")
            if sharding == "zero3" and method != "qlora":
                offloads = ("none", "optimizer", "params")
            if sharding == "fsdp":  # FSDP offloads parameters (and their optimizer) or nothing
                offloads = ("none", "params")
            optims = ("adamw_torch", "adamw_8bit") if method == "full" else ("adamw_torch",)
            for offload, optim in itertools.product(
                _choices("offload", pinned, offloads), _choices("optim", pinned, optims)
            ):
                for batch in _choices("batch", pinned, MICRO_BATCHES):
                    if "grad_accum" in pinned:
                        grad_accum = int(pinned["grad_accum"])
                    else:
                        per_step = batch * num_gpus
                        if per_step > effective and "batch" not in pinned:
                            continue
                        grad_accum = max(1, effective // per_step)
                    values = {
                        **pinned,
                        "method": method,
                        "num_gpus": num_gpus,
                        "grad_ckpt": grad_ckpt,
                        "sharding": sharding,
                        "offload": offload,
                        "optim": optim,
                        "batch": batch,
                        "grad_accum": grad_accum,
                        "dtype": dtype,
                        "seq_len": seq_len,
                    }
                    try:
                        yield TrainingConfig(**values).validate()
                    except ConfigError:
                        continue


def evaluate(request: PlanRequest, config: TrainingConfig) -> Candidate:
    machine = request.machine
    correction = correction_for(
        CorrectionKey(request.arch.model_type, config.method, machine.gpu.id, config.attn)
    )
    memory = estimate_memory(request.arch, config, correction=correction)
    host_fits = host_ram_fits(memory.host, machine.node_ram_bytes(config.num_gpus))
    fits = memory.device_bytes <= request.headroom * machine.memory_bytes and host_fits
    tps = throughput_tokens_per_s(request.arch, config, machine)
    if request.speed_corrections is None:
        request.speed_corrections = load_speed_corrections()
    measured = request.speed_corrections.get(speed_key(request.arch, config, machine).as_str())
    if measured is not None:
        tps *= measured.ratio
    total_tokens = request.train_tokens * request.epochs
    eta = total_tokens / tps if tps > 0 else float("inf")
    cost = eta / 3600 * machine.gpu.price_usd_per_hour * config.num_gpus
    band = SPEED_BAND.around(tps)
    ratio = measured.ratio if measured is not None else None
    return Candidate(config, memory, fits, tps, eta, cost, band, ratio, host_fits)


def _pareto(candidates: list[Candidate]) -> list[Candidate]:
    front: list[Candidate] = []
    for c in candidates:
        dominated = any(
            o is not c
            and o.memory.device_bytes <= c.memory.device_bytes
            and o.tokens_per_s >= c.tokens_per_s
            and o.risk <= c.risk
            and (
                o.memory.device_bytes < c.memory.device_bytes
                or o.tokens_per_s > c.tokens_per_s
                or o.risk < c.risk
            )
            for o in candidates
        )
        if not dominated:
            front.append(c)
    return front


def _rank_key(c: Candidate) -> tuple[float, int, int]:
    return (-round(c.tokens_per_s, 6), c.risk, c.memory.device_bytes)


def plan(request: PlanRequest) -> Plan:
    # The real model's parameter counts, once per config (disk-cached): never in the loop.
    param_roles(request.arch)
    recommending = not fully_pinned(request.pinned, request.machine.count)
    configs = list(candidate_configs(request))
    if not configs:
        raise _no_configuration(request)
    candidates = [evaluate(request, c) for c in configs]
    fitting = sorted((c for c in candidates if c.fits), key=_rank_key)
    if not recommending:
        only = candidates[0]
        return Plan(
            best=only,
            alternatives=(),
            evaluated=len(candidates),
            recommending=False,
            suggestions=() if only.fits else tuple(suggest(request, only.config)),
            request=request,
        )
    if not fitting:
        closest = min(candidates, key=lambda c: c.memory.device_bytes)
        return Plan(
            best=None,
            alternatives=(closest,),
            evaluated=len(candidates),
            recommending=True,
            suggestions=tuple(suggest(request, closest.config)),
            request=request,
        )
    best = fitting[0]
    front = [c for c in sorted(_pareto(fitting), key=_rank_key) if c is not best]
    per_method: dict[str, Candidate] = {}
    for c in fitting:  # the fastest of each method, so every method has a runner-up
        per_method.setdefault(c.config.method, c)
    extra = [c for c in per_method.values() if c is not best and c not in front]
    alternatives = tuple(sorted(front + extra, key=_rank_key)[:6])
    return Plan(best, alternatives, len(candidates), True, (), request)


def _no_configuration(request: PlanRequest) -> ConfigError:
    """Why the search found nothing to try, and the fix."""
    pinned = request.pinned
    gpus = int(pinned.get("num_gpus", request.machine.count))
    effective = request.effective_batch or DEFAULT_EFFECTIVE_BATCH
    if gpus > effective and "batch" not in pinned and "grad_accum" not in pinned:
        given = "--effective-batch" if request.effective_batch else "the default effective batch"
        return ConfigError(
            f"{gpus} GPUs need at least {gpus} sequences per optimizer step (one per GPU), "
            f"but {given} is {effective}",
            f"pass --effective-batch {gpus} or more, or plan for {effective} GPUs or fewer "
            f"(--num-gpus {effective})",
        )
    flags = [f"--{name.replace('_', '-')}" for name in pinned if name != "num_gpus"]
    return ConfigError(
        "no valid configuration with the pinned options",
        f"drop one of the pinned flags ({', '.join(flags)})" if flags else "see `ftui plan -h`",
    )


def fully_pinned(pinned: dict[str, Any], gpu_count: int) -> bool:
    """The searched knobs are all pinned: estimate this configuration instead of recommending."""
    needed = ["method", "batch", "grad_ckpt"]
    if gpu_count > 1:
        needed.append("sharding")
    return all(name in pinned for name in needed)


ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def _experts_left_out(arch: ModelArch, config: TrainingConfig) -> TrainingConfig | None:
    """`config` with LoRA on attention only, where all-linear also adapts this MoE's fused
    expert tensors (PEFT's mapping) and the model has q/k/v/o projections; else None."""
    roles = attached_roles(arch) if arch.is_moe else None
    if roles is None or not roles.parameter_lora:
        return None
    attention = config.with_changes(targets=ATTENTION_TARGETS, dora=False)
    return attention if lora_param_count(roles, attention) > 0 else None


def suggest(request: PlanRequest, config: TrainingConfig) -> list[str]:
    """What would make `config` fit: fewer tokens, QLoRA, more GPUs, offload, a bigger GPU."""
    out: list[str] = []
    limit = request.headroom * request.machine.memory_bytes

    def fits(c: TrainingConfig, machine: Machine | None = None) -> bool:
        m = machine or request.machine
        if c.method == "prefix" and c.grad_ckpt:  # prefix tuning cannot checkpoint
            c = c.with_changes(grad_ckpt=False)
        try:
            c.validate()  # a suggestion the method cannot take (sharding the PEFT family)
        except ConfigError:
            return False
        memory = estimate_memory(request.arch, c)
        return memory.device_bytes <= request.headroom * m.memory_bytes and host_ram_fits(
            memory.host, m.node_ram_bytes(c.num_gpus)
        )

    host = estimate_memory(request.arch, config).host
    node_ram = request.machine.node_ram_bytes(config.num_gpus)
    if not host_ram_fits(host, node_ram):
        out.append(
            f"more host RAM: this setup needs {host.per_node_bytes / GIB:,.0f} GiB of CPU RAM "
            f"per node, {node_ram / GIB:,.0f} GiB there ({HOST_HEADROOM:.0%} usable); "
            "check --host-ram, or offload less"
        )

    if config.method != "qlora":
        q = config.with_changes(method="qlora", batch=1, grad_ckpt=True, sharding="none")
        q = q.with_changes(offload="none", num_gpus=min(config.num_gpus, request.machine.count))
        if fits(q):
            out.append("use QLoRA (--method qlora): 4-bit base weights")
    attention = _experts_left_out(request.arch, config) if ALL_LINEAR in config.targets else None
    if config.is_peft and attention is not None and fits(attention):
        out.append(
            "leave the experts' LoRA out (all-linear adapts the fused experts): "
            f"--targets {','.join(ATTENTION_TARGETS)}"
        )
    for seq in (4096, 2048, 1024, 512):
        if seq >= config.seq_len:
            continue
        shorter = config.with_changes(seq_len=seq, batch=1, grad_ckpt=True)
        if fits(shorter):
            out.append(f"train on shorter sequences: --seq-len {seq} --batch 1 fits")
            break
    for count in (2, 4, 8):
        if count <= config.num_gpus:
            continue
        more = Machine(
            request.machine.gpu,
            count,
            request.machine.memory_bytes,
            False,
            request.machine.host_ram_bytes,
            request.machine.host_ram_source,
        )
        c = config.with_changes(num_gpus=count, sharding="zero3", batch=1, grad_ckpt=True)
        if fits(c, more):
            out.append(f"shard over {count} GPUs: --num-gpus {count} --sharding zero3")
            break
    masters = config.method in ("bias", "freeze") and not config.pure_bf16
    lean_bf16 = config.with_changes(pure_bf16=True, batch=1, grad_ckpt=True)
    if masters and config.dtype == "bf16" and fits(lean_bf16):
        out.append("bf16 weights without fp32 masters: --pure-bf16 --batch 1")
    if config.method == "full":
        lean = config.with_changes(
            pure_bf16=config.dtype == "bf16", optim="adamw_8bit", batch=1, grad_ckpt=True
        )
        if fits(lean):
            out.append("cut optimizer memory: --pure-bf16 --optim adamw_8bit --batch 1")
    if config.num_gpus > 1 or config.sharding != "none":
        c = config.with_changes(sharding="zero3", offload="optimizer", batch=1, grad_ckpt=True)
        try:
            c.validate()
            if fits(c):
                out.append("offload optimizer states to CPU RAM: --offload optimizer (slower)")
        except ConfigError:
            pass
    bigger = sorted(
        (p for p in gpu_profiles() if p.memory_total_bytes * request.headroom > limit),
        key=lambda p: (p.memory_total_bytes, p.price_usd_per_hour),
    )
    for profile in bigger:
        machine = Machine(
            profile,
            config.num_gpus,
            profile.memory_total_bytes,
            False,
            request.machine.host_ram_bytes,
            request.machine.host_ram_source,
        )
        c = config.with_changes(batch=1, grad_ckpt=True)
        if fits(c, machine):
            out.append(f"a GPU with more memory: {profile.id} ({profile.memory_gb:g} GB) fits")
            break
    if not out:
        need = estimate_memory(request.arch, config.with_changes(batch=1)).device_bytes
        out.append(
            f"nothing simple fits: even batch 1 needs {need / GIB:.1f} GiB per GPU; "
            "try QLoRA on several GPUs with --sharding fsdp"
        )
    return out


def resolve_machine(
    *,
    gpu: str | None = None,
    num_gpus: int | None = None,
    simulate: str | None = None,
    host_ram_gib: float | None = None,
) -> Machine:
    """The machine to plan for: `--gpu PROFILE`, `--simulate SPEC`, or the GPUs detected here.
    Host RAM: `--host-ram GiB` (one node's), else what is detected here when planning for the
    GPUs here, else the GPU profile's typical RAM per GPU."""
    import dataclasses

    machine = _resolve_gpus(gpu=gpu, num_gpus=num_gpus, simulate=simulate)
    if host_ram_gib is not None:
        from engine.errors import FtuiError

        if not (host_ram_gib > 0 and host_ram_gib < 1e7):
            raise FtuiError(
                f"--host-ram {host_ram_gib:g} is not a size in GiB",
                "pass one node's CPU RAM in GiB, e.g. --host-ram 512",
            )
        return dataclasses.replace(
            machine, host_ram_bytes=int(host_ram_gib * GIB), host_ram_source="--host-ram"
        )
    return machine


def _resolve_gpus(*, gpu: str | None, num_gpus: int | None, simulate: str | None) -> Machine:
    from engine.errors import FtuiError
    from engine.machine.fakenvml import parse_simulate_spec
    from profiles import find_gpu_profile

    if gpu and gpu != "auto":
        profile = find_gpu_profile(gpu)
        if profile is None:
            ids = ", ".join(p.id for p in gpu_profiles())
            raise FtuiError(f"--gpu {gpu!r} names no known GPU", f"use one of: {ids}")
        return Machine(profile, num_gpus or 1, profile.memory_total_bytes, False)
    if simulate:
        profiles = parse_simulate_spec(simulate)
        count = num_gpus or len(profiles)
        return Machine(profiles[0], count, profiles[0].memory_total_bytes, False)
    from engine.machine.hardware import detect_machine

    snapshot = detect_machine()
    if not snapshot.has_gpu:
        raise FtuiError(
            f"no GPU to plan for: {snapshot.no_gpu_reason}",
            "name the GPUs you will rent: --gpu h100 --num-gpus 8, or --simulate h100x8",
        )
    first = snapshot.gpus[0]
    same = [g for g in snapshot.gpus if g.name == first.name]
    profile = find_gpu_profile(first.profile_id or first.name)
    if profile is None:
        raise FtuiError(
            f"detected GPU {first.name!r} has no built-in profile (needed for its speed)",
            "pass the closest profile with --gpu (see `ftui gpu-profiles`)",
        )
    count = min(num_gpus or len(same), len(same))
    return Machine(
        profile, count, first.memory_total_bytes, True, snapshot.host.ram_total_bytes, "detected"
    )
