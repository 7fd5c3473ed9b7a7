"""Parameters a model keeps in fp32 although it is loaded in 16 bits.

transformers loads a checkpoint with `dtype=bfloat16` (or float16) but leaves some parameters
in fp32: those the model code creates with `dtype=torch.float32` (HY-V4's hyper-connection
mixers and fp32 output head, MoE routers' `gate.weight`, Inkling 2's short convolutions), and
those the class names in `_keep_in_fp32_modules_strict` (bf16 and fp16) or
`_keep_in_fp32_modules` (fp16 only), matched as transformers' loader matches them (a regex
search in the parameter's name). Each such parameter costs 4 bytes instead of 2 as a weight
and, when trained, as a gradient, in AdamW's two states and in its step's temporary.

`Fp32Census` counts them by role while engine/plan/params.py counts the meta-built model;
`kept_fp32_states` turns the counts into the bytes engine/plan/estimator.py adds to its
weight / gradient / optimizer terms. torch is imported inside the functions only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.plan.counts import ParamCounts
    from engine.training_config import TrainingConfig

# the 16-bit dtypes a model can be loaded in, by ftui's --dtype name
KEPT_DTYPES = ("bf16", "fp16")
# pseudo-roles beside the roles' names: parameters that never get a gradient (DeepSeek
# sparse attention's indexer) and Linear weights bitsandbytes quantises anyway
NO_GRADIENT = "no_gradient"
QUANTIZABLE = "quantizable"


def _plan(model: Any, dtype: str) -> re.Pattern[str] | None:
    """transformers' dtype plan for loading in `dtype`: the names it keeps in fp32."""
    names = set(getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    if dtype == "fp16":
        names |= set(getattr(model, "_keep_in_fp32_modules", None) or ())
    if not names:
        return None
    return re.compile("|".join(f"(?:{name.replace('*', '.*')})" for name in sorted(names)))


class Fp32Census:
    """Counts, per 16-bit load dtype and role, the parameters that stay fp32."""

    def __init__(self, model: Any) -> None:
        self._plans = {dtype: _plan(model, dtype) for dtype in KEPT_DTYPES}
        self.counts: dict[str, dict[str, int]] = {dtype: {} for dtype in KEPT_DTYPES}

    def add(
        self, name: str, param: Any, role: str, count: int, *, no_gradient: bool, quantizable: bool
    ) -> None:
        import torch

        if not param.is_floating_point():
            return
        built_fp32 = param.dtype == torch.float32  # the model code asked for fp32
        for dtype, plan in self._plans.items():
            if not (built_fp32 or (plan is not None and plan.search(name))):
                continue
            counts = self.counts[dtype]
            counts[role] = counts.get(role, 0) + count
            if no_gradient:
                counts[NO_GRADIENT] = counts.get(NO_GRADIENT, 0) + count
            if quantizable:
                counts[QUANTIZABLE] = counts.get(QUANTIZABLE, 0) + count


@dataclass(frozen=True)
class KeptFp32:
    """Parameters kept in fp32 for one load dtype (see ParamCounts.fp32...)."""

    total: int = 0
    head: int = 0  # of the output head (the input embeddings when they are tied)
    idle: int = 0  # never updated in a full fine-tune: towers, the indexer
    quantizable: int = 0  # Linear weights QLoRA quantises all the same


def kept_fp32(counts: dict[str, dict[str, int]], dtype: str, tied: bool) -> KeptFp32:
    """The census of `dtype` (ftui's --dtype; fp32 weights keep nothing apart)."""
    found = counts.get(dtype, {})
    roles = {k: v for k, v in found.items() if k not in (NO_GRADIENT, QUANTIZABLE)}
    return KeptFp32(
        total=sum(roles.values()),
        head=roles.get("embedding" if tied else "lm_head", 0),
        idle=roles.get("towers", 0) + found.get(NO_GRADIENT, 0),
        quantizable=found.get(QUANTIZABLE, 0),
    )


@dataclass(frozen=True)
class Fp32States:
    """Bytes the fp32-kept parameters add beyond their 16-bit share (per GPU, unsharded)."""

    frozen: float = 0.0
    trainable: float = 0.0
    gradients: float = 0.0
    optimizer: float = 0.0
    optimizer_temp: float = 0.0


def kept_fp32_states(params: ParamCounts, config: TrainingConfig, b: int) -> Fp32States:
    """What loading in `b`-byte weights leaves 2 bytes short on fp32-kept parameters: a frozen
    16-bit base's (LoRA, prompts, IA3, ...; bias / freeze under --pure-bf16), a QLoRA or
    8-bit base's unquantised ones (without k-bit upcasting, which makes every kept parameter
    fp32 anyway), and a pure-16-bit full fine-tune's weights, gradients and AdamW states (fp32
    master weights or --dtype fp32 already count 4 bytes)."""
    from engine.plan.estimator import optimizer_bytes_per_param, optimizer_temp_bytes_per_param

    wide = 4 - b
    if wide <= 0 or params.fp32 <= 0:
        return Fp32States()
    if config.method == "qlora" or config.base_bits == 8:  # bitsandbytes quantises Linears
        kept = 0 if config.kbit_upcast else params.fp32 - params.fp32_quantizable
        return Fp32States(frozen=wide * kept)
    if config.method in ("bias", "freeze") and not config.pure_bf16:
        return Fp32States()  # fp32 master weights: 4 bytes already
    if config.method != "full":  # a 16-bit base, frozen (bias / freeze: mostly)
        return Fp32States(frozen=wide * params.fp32)
    if not config.pure_bf16:
        return Fp32States()
    updated = params.fp32 - params.fp32_idle
    optim = config.optim
    return Fp32States(
        trainable=wide * params.fp32,
        gradients=wide * updated,
        optimizer=updated
        * (optimizer_bytes_per_param(optim, 4) - optimizer_bytes_per_param(optim, b)),
        optimizer_temp=updated
        * (optimizer_temp_bytes_per_param(optim, 4) - optimizer_temp_bytes_per_param(optim, b)),
    )
