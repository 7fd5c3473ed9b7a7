"""Tier 2 of the memory estimator: a dry run of real training steps on fake tensors.

The real transformers model is built from its config.json on the `meta` device, set up the way
a Hugging Face Trainer run sets it up (dtype, gradient checkpointing, PEFT, a 4-bit stand-in for
bitsandbytes), then materialised as fake tensors (`FakeTensorMode`: shapes, dtypes and storages,
no data) and trained for a few steps: forward, backward, gradient clipping, optimizer step,
`zero_grad`. A `TorchDispatchMode` sees every op's outputs and counts each output's storage
once, from the op that creates it until the storage dies, so the running maximum is what
`torch.cuda.max_memory_allocated` reports on a GPU (before the caching allocator's rounding,
fragmentation, the CUDA context and communication buffers, which a caller models separately).

No GPU, no weights, no network. A 7-8B model takes a few seconds of CPU. torch, transformers
and peft are imported inside the functions only: `import engine.plan.dryrun.entry` stays light.

This module is the public entry and the driver (the training steps, HF Trainer's optimizer
choice, the result); the parts live beside it:
  engine/plan/dryrun/tracker.py  the live-storage tracker (`MemoryLedger`, `track_memory`)
  engine/plan/dryrun/model.py    building the model: dtype, attention, checkpointing, PEFT
  engine/plan/dryrun/bnb.py      the bitsandbytes stand-ins: the 4-bit layer, 8-bit optimizers
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from engine.errors import FtuiError
from engine.models import ModelArch
from engine.plan.dryrun.bnb import bnb_optimizer
from engine.plan.dryrun.model import (
    DryRunError,
    build_model,
    count_params,
    one_line,
    retie,
    shared_parameters,
)
from engine.plan.dryrun.stages import (
    build_reference,
    is_preference,
    materialise_reference,
    preference_steps,
    stage_phases,
)
from engine.plan.dryrun.tracker import MemoryLedger, track_memory
from engine.plan.estimator import GIB
from engine.training_config import TrainingConfig

__all__ = [
    "GIB",
    "PHASES",
    "DryRunDeclined",
    "DryRunError",
    "DryRunResult",
    "MemoryLedger",
    "dry_run",
    "dry_run_or_decline",
    "track_memory",
]

PHASES = ("forward", "backward", "optimizer")

# HF Trainer's defaults that touch memory.
_LEARNING_RATE = 5e-5
_MAX_GRAD_NORM = 1.0
# Names HF Trainer keeps out of weight decay (its second parameter group).
_NO_DECAY_PATTERNS = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")


@dataclass(frozen=True)
class DryRunResult:
    peak_allocated_bytes: int  # max live tensor-storage bytes (torch.cuda.max_memory_allocated)
    peak_phase: str  # "forward", "backward" or "optimizer" ("recompute" counts as backward);
    # DPO/KTO: also "reference_forward" (engine/plan/dryrun/stages.py)
    phase_peaks: dict[str, int]  # max live bytes seen in each phase
    persistent_bytes: int  # live after the last step's zero_grad: weights + optimizer states
    total_params: int  # as the real model counts them (ties once, 4-bit weights unpacked)
    trainable_params: int
    seconds: float  # wall time of the whole dry run
    steps: int
    notes: tuple[str, ...]  # what was approximated
    paged_bytes: int = field(default=0)  # paged optimizer states (unified memory), in the peak

    def to_dict(self) -> dict[str, Any]:
        def gib(n: int) -> float:
            return round(n / GIB, 3)

        return {
            "peak_allocated_bytes": self.peak_allocated_bytes,
            "peak_allocated_gib": gib(self.peak_allocated_bytes),
            "peak_phase": self.peak_phase,
            "phase_peaks_bytes": dict(self.phase_peaks),
            "phase_peaks_gib": {k: gib(v) for k, v in self.phase_peaks.items()},
            "persistent_bytes": self.persistent_bytes,
            "persistent_gib": gib(self.persistent_bytes),
            "paged_bytes": self.paged_bytes,
            "paged_gib": gib(self.paged_bytes),
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "seconds": round(self.seconds, 3),
            "steps": self.steps,
            "notes": list(self.notes),
        }


# -- the dry run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DryRunDeclined:
    """A dry run that could not run this model/config: why, in one line. The analytic
    estimate stands."""

    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"declined": self.reason, "analytic_estimate_stands": True}


def dry_run_or_decline(arch: ModelArch, config: TrainingConfig) -> DryRunResult | DryRunDeclined:
    """The dry run, or the one line saying why it cannot run (never an exception)."""
    try:
        return dry_run(arch, config)
    except DryRunError as exc:
        return DryRunDeclined(exc.message)


def dry_run(arch: ModelArch, config: TrainingConfig, *, steps: int = 2) -> DryRunResult:
    """Train `steps` steps of `arch` under `config` on fake tensors; report the memory.

    Anything that goes wrong inside transformers, PEFT or torch is a `DryRunError` with one
    line saying what could not be done."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1 (got {steps})")
    config.validate()
    _import_stack()
    try:
        return _dry_run(arch, config, steps)
    except FtuiError:
        raise
    except Exception as exc:  # a model's code the dry run cannot follow: say so, in one line
        raise DryRunError(
            f"the dry run of {arch.name} ({arch.model_type}) cannot run: {_why(exc)}",
            "the analytic estimate stands",
        ) from exc


def _why(exc: Exception) -> str:
    """One line for a failure; data-dependent routing named for what it is.

    Fake tensors have shapes but no values: an expert loop that sizes its batches from the
    router's choices (`nonzero`, `.tolist()`, `.item()`) cannot be followed, and the real peak
    depends on how real data routes. Only the analytic estimate (an even split) can plan it.
    """
    from torch._subclasses.fake_tensor import (
        DataDependentOutputException,
        DynamicOutputShapeException,
    )

    if isinstance(exc, (DataDependentOutputException, DynamicOutputShapeException)):
        return (
            f"its forward sizes tensors from their values ({exc.func}, as in routing tokens "
            "to experts), which fake tensors do not have"
        )
    return one_line(exc)


def _dry_run(arch: ModelArch, config: TrainingConfig, steps: int) -> DryRunResult:
    start = time.perf_counter()
    import torch

    notes: list[str] = []
    with warnings.catch_warnings():
        # Library chatter about a model nobody will train (PEFT calling transformers' renamed
        # gradient-checkpointing API, PEFT's MoE target patterns): not the user's business.
        warnings.simplefilter("ignore")
        setup = build_model(arch, config, notes)
        reference = build_reference(arch, config, notes)  # DPO/KTO's frozen copy, or None
    model = setup.model
    total_params, trainable_params = count_params(model)
    if not trainable_params:
        raise DryRunError(
            f"nothing to train: {config.method} left no trainable parameter",
            "check --targets against the model's module names (or use all-linear)",
        )
    ties = shared_parameters(model)
    _note_distribution(config, notes)

    with track_memory() as ledger:
        model.to_empty(device="cpu")  # new Parameters: collect them only after this
        retie(ties)
        materialise_reference(reference)
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        optimizer = _make_optimizer(trainable, model, config, notes)
        autocast: Any = (
            torch.autocast("cpu", dtype=setup.autocast_dtype)
            if setup.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        params = [p for _, p in trainable]
        try:
            if is_preference(config):  # TRL's step: engine/plan/dryrun/stages.py
                preference_steps(
                    model, reference, optimizer, params, config, steps,
                    setup.autocast_dtype, ledger, notes,
                )  # fmt: skip
            else:
                _train(model, optimizer, params, config, steps, autocast, ledger)
        except Exception as exc:
            raise DryRunError(
                f"the dry run of {arch.name} ({arch.model_type}) failed in the {ledger.phase} "
                f"phase: {_why(exc)}",
                "the analytic estimate stands",
            ) from exc
        ledger.set_phase("done")
        gc.collect()
        persistent = ledger.live
        paged = int(getattr(optimizer, "paged_bytes", 0))

    if paged:
        notes.append(
            f"paged optimizer states ({paged / GIB:.2f} GiB) live in CUDA unified memory: "
            "counted in the peak here, but torch.cuda.max_memory_allocated does not see them "
            "and they page out to CPU RAM under memory pressure"
        )
    phases = stage_phases(config)  # DPO/KTO add "reference_forward"
    phase_peaks = {phase: ledger.phase_peaks.get(phase, 0) for phase in phases}
    peak_phase = max(phases, key=lambda phase: phase_peaks[phase])
    return DryRunResult(
        peak_allocated_bytes=phase_peaks[peak_phase],
        peak_phase=peak_phase,
        phase_peaks=phase_peaks,
        persistent_bytes=persistent,
        total_params=total_params,
        trainable_params=trainable_params,
        seconds=time.perf_counter() - start,
        steps=steps,
        notes=tuple(dict.fromkeys(notes)),
        paged_bytes=paged,
    )


def _train(
    model: Any,
    optimizer: Any,
    params: list[Any],
    config: TrainingConfig,
    steps: int,
    autocast: Any,
    ledger: MemoryLedger,
) -> None:
    """HF Trainer's step: forward + loss, backward, clip, optimizer step, zero_grad(None)."""
    import torch

    for _ in range(steps):
        ledger.set_phase("forward")
        input_ids = torch.zeros((config.batch, config.seq_len), dtype=torch.long)
        labels = torch.zeros((config.batch, config.seq_len), dtype=torch.long)
        with autocast:
            loss = model(input_ids=input_ids, labels=labels).loss  # outputs die here
        ledger.set_phase("backward")  # gradient checkpointing's recompute happens here too
        loss.backward()
        del loss, input_ids, labels
        ledger.set_phase("optimizer")
        torch.nn.utils.clip_grad_norm_(params, _MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@functools.cache
def _import_stack() -> None:
    """Import torch, transformers and peft once, quietly (bitsandbytes warns about CPU kernels)."""
    bnb_logger = logging.getLogger("bitsandbytes")
    level = bnb_logger.level
    bnb_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit use in the stack
            import peft  # noqa: F401
            import transformers  # noqa: F401
    except ImportError as exc:
        raise DryRunError(
            f"the dry run needs torch, transformers and peft: {exc}",
            "pip install 'ftui[train]' (install torch for your platform first)",
        ) from exc
    finally:
        bnb_logger.setLevel(level)


def _note_distribution(config: TrainingConfig, notes: list[str]) -> None:
    if config.sharding != "none":
        notes.append(f"sharding is not simulated ({config.sharding}): single-replica peak")
    elif config.num_gpus > 1:
        notes.append("DDP's gradient buckets are not simulated: single-replica peak")
    if config.offload != "none":
        notes.append(f"offload ({config.offload}) is not simulated")


# -- optimizers ----------------------------------------------------------------------------------


def _param_groups(trainable: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """HF Trainer's two groups: weight decay and no decay (bias and norms)."""
    decay, no_decay = [], []
    for name, param in trainable:
        lowered = name.lower()
        if any(re.search(pattern, lowered) for pattern in _NO_DECAY_PATTERNS):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": 0.0}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _make_optimizer(
    trainable: list[tuple[str, Any]], model: Any, config: TrainingConfig, notes: list[str]
) -> Any:
    import torch

    groups = _param_groups(trainable)
    optim = config.optim
    if optim == "adamw_torch":
        return torch.optim.AdamW(groups, lr=_LEARNING_RATE, foreach=True)
    if optim == "adamw_torch_fused":
        return torch.optim.AdamW(groups, lr=_LEARNING_RATE, fused=True)
    if optim == "sgd":
        return torch.optim.SGD(groups, lr=_LEARNING_RATE, foreach=True)
    if optim == "adafactor":
        from transformers.optimization import Adafactor

        adafactor: Any = Adafactor
        return adafactor(groups, lr=1e-4, scale_parameter=False, relative_step=False)
    # bitsandbytes: adamw_8bit, paged_adamw_8bit, paged_adamw_32bit
    return bnb_optimizer(groups, model, optim, _LEARNING_RATE, notes)
