"""Parameter counts by role, from the real transformers model built on the meta device.

The closed form in engine/plan/estimator.py knows a llama-shaped decoder; today's models have
low-rank attention (MLA), shared experts, fused 3-D expert tensors, Mamba and linear-attention
blocks, dense first layers and towers. So, once per config, the real model is built on the
`meta` device (no memory, no weights) and every parameter is counted by role. The result is
cached on disk in ftui's cache folder, keyed by a hash of config.json and the transformers
version, and beside it in memory: the solver never builds anything in its candidate loop.

`param_roles(arch)` builds (or reads) the counts and attaches them to `arch`;
`attached_roles(arch)` is the estimator's lookup: microseconds, never a build. When
transformers cannot build the model the closed form stands and `closed_form_reason` says why.

torch and transformers are imported inside the functions only: a warm cache never loads them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from engine.models import ModelArch
from engine.paths import ftui_cache
from engine.training_config import ALL_LINEAR

# Bump when what is counted changes: old cache entries are then ignored.
SCHEMA = 11
ROLES = (
    "embedding",  # input (and position) embeddings
    "lm_head",  # the output head when it is not tied to the embeddings
    "attention",  # attention projections (MLA's low-rank ones included), sinks
    "dense_mlp",  # MLPs of dense layers
    "routed_experts",  # the experts a router picks from
    "shared_experts",  # experts every token passes through (and their gates)
    "router",
    "norms",
    "ssm",  # Mamba / gated linear-attention blocks (projections, conv, A, D, dt)
    "towers",  # vision or audio towers and their projectors
    "mtp",  # multi-token-prediction heads
    "other",
)


@dataclass(frozen=True)
class LinearGroup:
    """Every `nn.Linear` with one module name (`q_proj`), summed over layers (and experts).

    LoRA's adapter size and its saved inputs follow from these sums exactly."""

    name: str
    modules: int
    in_features: int  # sum over the modules
    out_features: int  # sum over the modules
    weights: int  # sum of in x out
    expert: bool  # routed experts as separate linears: a token visits k of them per layer
    # in a vision/audio tower, which text-only training never runs, or in DeepSeek sparse
    # attention's indexer, which runs under no_grad: no saved activations, no gradients
    tower: bool = False


@dataclass(frozen=True)
class ParamRoles:
    """Parameter counts of one model by role (ties counted once)."""

    roles: dict[str, int]
    total: int
    # Weights bitsandbytes' 4-bit loading replaces: every nn.Linear but the output head.
    # 3-D expert tensors are parameters, not Linear modules: they stay 16-bit.
    quantizable: int
    expert_tensors: int  # fused 3-D expert parameters (routed experts as one tensor)
    linears: tuple[LinearGroup, ...]
    source: str  # "meta" (the real model) or "closed-form"
    transformers_version: str = ""
    reason: str = ""  # why the closed form stands (source "closed-form")
    model_class: str = ""
    # Linear names PEFT refuses to adapt in this architecture (Mamba's out_proj): all-linear
    # leaves them out.
    unadaptable: tuple[str, ...] = ()
    # transformers' supports_gradient_checkpointing (CTRL, CPM-Ant and GPT-NeoX-Japanese lack it)
    checkpointing: bool = True
    # fused attention kernels the model class supports ("sdpa", "flash_attention_2"); without
    # them transformers runs eager attention, which keeps the softmax probabilities
    attention_kernels: tuple[str, ...] = ("sdpa", "flash_attention_2")
    # parameters whose only output is non-differentiable (DeepSeek sparse attention's
    # indexer picks top-k indices): training never gives them a gradient
    no_gradient: int = 0
    # LoRA parameters per unit of rank that PEFT's all-linear puts on parameters rather than
    # Linear modules: transformers 5's fused 3-D experts and MoE routers (PEFT maps the v4
    # expert and router Linears to them; see engine/plan/param_lora.py)
    parameter_lora: int = 0
    # what those adapters wrap: the parameters' elements and the layers holding them
    parameter_lora_weights: int = 0
    parameter_lora_layers: int = 0
    # their input widths summed over layers: experts' (each token visits k) and routers'
    parameter_lora_expert_inputs: int = 0
    parameter_lora_router_inputs: int = 0
    # the same, per wrapped parameter ("gate_up_proj", "down_proj", "gate.weight"): [per
    # rank, weights, layers, expert inputs, router inputs]; and PEFT's rewrite of a target
    # list on this model: transformers-4 name -> parameter, and the names fused into one
    # parameter (a list naming only some of them is refused by PEFT)
    parameter_lora_parts: dict[str, list[int]] = field(default_factory=dict)
    parameter_lora_targets: dict[str, str] = field(default_factory=dict)
    parameter_lora_fused: dict[str, list[str]] = field(default_factory=dict)
    # parameters that stay fp32 when the model is loaded in 16 bits, by load dtype ("bf16",
    # "fp16") and role, plus "no_gradient" and "quantizable" (engine/plan/fp32_params.py)
    kept_fp32: dict[str, dict[str, int]] = field(default_factory=dict)

    def role(self, name: str) -> int:
        return self.roles.get(name, 0)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["linears"] = [asdict(group) for group in self.linears]
        data["unadaptable"] = list(self.unadaptable)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParamRoles:
        groups = tuple(LinearGroup(**group) for group in data.get("linears", ()))
        return cls(
            roles={str(k): int(v) for k, v in data["roles"].items()},
            total=int(data["total"]),
            quantizable=int(data["quantizable"]),
            expert_tensors=int(data["expert_tensors"]),
            linears=groups,
            source=str(data["source"]),
            transformers_version=str(data.get("transformers_version", "")),
            reason=str(data.get("reason", "")),
            model_class=str(data.get("model_class", "")),
            unadaptable=tuple(data.get("unadaptable", ())),
            checkpointing=bool(data.get("checkpointing", True)),
            attention_kernels=tuple(data.get("attention_kernels", ("sdpa", "flash_attention_2"))),
            no_gradient=int(data.get("no_gradient", 0)),
            parameter_lora=int(data.get("parameter_lora", 0)),
            parameter_lora_weights=int(data.get("parameter_lora_weights", 0)),
            parameter_lora_layers=int(data.get("parameter_lora_layers", 0)),
            parameter_lora_expert_inputs=int(data.get("parameter_lora_expert_inputs", 0)),
            parameter_lora_router_inputs=int(data.get("parameter_lora_router_inputs", 0)),
            parameter_lora_parts={
                str(k): [int(x) for x in v] for k, v in data.get("parameter_lora_parts", {}).items()
            },
            parameter_lora_targets={
                str(k): str(v) for k, v in data.get("parameter_lora_targets", {}).items()
            },
            parameter_lora_fused={
                str(k): [str(x) for x in v] for k, v in data.get("parameter_lora_fused", {}).items()
            },
            kept_fp32={
                str(dtype): {str(k): int(v) for k, v in counts.items()}
                for dtype, counts in data.get("kept_fp32", {}).items()
            },
        )


@dataclass
class _Registry:
    by_key: dict[str, ParamRoles] = field(default_factory=dict)
    # id(arch) -> (arch, roles): the arch is held so its id cannot be reused.
    attached: dict[int, tuple[ModelArch, ParamRoles]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # cache key -> why it failed
    reasons: dict[int, tuple[ModelArch, str]] = field(default_factory=dict)


_REGISTRY = _Registry()


def attached_roles(arch: ModelArch) -> ParamRoles | None:
    """The counts `param_roles` attached to this arch, or None (the estimator's fast path)."""
    entry = _REGISTRY.attached.get(id(arch))
    return entry[1] if entry is not None and entry[0] is arch else None


def closed_form_reason(arch: ModelArch) -> str | None:
    """Why this arch is counted in closed form (None: it has real counts, or was not tried)."""
    entry = _REGISTRY.reasons.get(id(arch))
    return entry[1] if entry is not None and entry[0] is arch else None


def _closed_form(arch: ModelArch, reason: str) -> None:
    _REGISTRY.reasons[id(arch)] = (arch, reason)


def transformers_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return None


def cache_key(config: dict[str, Any], version: str) -> str:
    text = json.dumps(config, sort_keys=True, default=str)
    digest = hashlib.sha256(f"{SCHEMA}|{version}|{text}".encode()).hexdigest()
    return digest[:32]


def cache_dir() -> Path:
    return ftui_cache() / "param-counts"


def param_roles(arch: ModelArch, *, build: bool = True) -> ParamRoles | None:
    """The real model's counts for `arch`: memory, then the disk cache, then (with `build`)
    the meta-device model. Attached to `arch` for the estimator. None when transformers is
    missing or cannot build this config (`closed_form_reason` then says why)."""
    found = attached_roles(arch)
    if found is not None:
        return found
    version = transformers_version()
    if version is None:
        _closed_form(arch, "transformers is not installed")
        return None
    key = cache_key(arch.config, version)
    roles = _REGISTRY.by_key.get(key) or _read_cache(key) or _read_seed(key)
    if roles is None and key in _REGISTRY.failures:
        _closed_form(arch, f"transformers cannot build it ({_REGISTRY.failures[key]})")
        return None
    if roles is None and build:
        try:
            roles = count_on_meta(arch.config, version)
        except Exception as exc:  # any failure to build: the closed form stands
            reason = _one_line(exc)
            _REGISTRY.failures[key] = reason
            _closed_form(arch, f"transformers cannot build it ({reason})")
            return None
        _write_cache(key, roles)
    if roles is None:
        return None
    _REGISTRY.by_key[key] = roles
    _REGISTRY.attached[id(arch)] = (arch, roles)
    return roles


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _read_cache(key: str) -> ParamRoles | None:
    path = cache_dir() / f"{key}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        roles = ParamRoles.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return roles if _current(data, roles) else None


def _current(data: dict[str, Any], roles: ParamRoles) -> bool:
    """Whether counts on disk hold everything this version reads."""
    if "no_gradient" not in data:
        return False  # written before towers, checkpointing and kernels were recorded
    if roles.no_gradient and not any(group.tower for group in roles.linears):
        return False  # written before the indexer's Linears were marked as never trained
    # written before LoRA on fused experts was recorded per parameter
    return not (roles.parameter_lora and not roles.parameter_lora_parts)


def _read_seed(key: str) -> ParamRoles | None:
    """The counts shipped for the built-in model profiles (same key: same config, same
    transformers version), so that planning a profile needs no torch."""
    from engine.plan.param_seed import SEED

    data = SEED.get(key)
    if data is None:
        return None
    roles = ParamRoles.from_dict(data)
    return roles if _current(data, roles) else None


def _write_cache(key: str, roles: ParamRoles) -> None:
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Atomic: a concurrent `ftui plan` never reads half a file.
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(roles.to_dict(), handle)
        os.replace(tmp, folder / f"{key}.json")
    except OSError:
        pass  # a read-only cache costs a rebuild next time, nothing else


def peft_target_modules(model: Any, targets: tuple[str, ...]) -> str | list[str]:
    """PEFT's `target_modules` for ftui's targets. all-linear is PEFT's meaning (every Linear
    but the output head) restricted to plain Linear layers: PEFT would also wrap Linear
    subclasses whose forward returns something else (Llama 4's router returns a tuple, and
    LoRA's forward then fails)."""
    import torch

    if ALL_LINEAR not in targets:
        return list(targets)
    extras = {t for t in targets if t != ALL_LINEAR}
    output = model.get_output_embeddings()
    plain: set[str] = set()
    subclassed = False
    for name, module in model.named_modules():
        if not name or module is output:
            continue
        if adaptable_linear(module):
            plain.add(name.rsplit(".", 1)[-1])
        elif isinstance(module, torch.nn.Linear):
            subclassed = True
    skip = set(peft_unadaptable(model))
    if not subclassed and not extras and not skip & plain:
        return ALL_LINEAR
    return sorted((plain - skip) | extras)


def adaptable_linear(module: Any) -> bool:
    """A layer ftui's LoRA adapts: a Linear (subclasses such as Falcon's included), GPT-2's
    Conv1D, bitsandbytes' quantised Linear; not a router built on Linear whose forward returns
    a tuple (Llama 4's), which breaks LoRA's forward."""
    import torch

    kind = type(module).__name__
    if kind == "Conv1D":
        return True
    grouped = "GroupedLinear" in kind  # DeepSeek-V4's per-group o_a_proj: its own forward
    return isinstance(module, torch.nn.Linear) and "Router" not in kind and not grouped


# PEFT refuses LoRA on these modules of Mamba-style models, even through its own all-linear
# (peft.tuners.tuners_utils._check_lora_target_modules_mamba).
_MAMBA_TYPES = frozenset({"falcon_h1", "mamba", "mamba2", "falcon_mamba", "nemotron_h"})
_MAMBA_UNADAPTABLE = ("conv1d", "out_proj")


def peft_unadaptable(model: Any) -> tuple[str, ...]:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return _MAMBA_UNADAPTABLE if model_type in _MAMBA_TYPES else ()


# -- counting on the meta device ---------------------------------------------------------------

_INDEXER = re.compile(r"\.indexer(\.|$)")
_TOWER = re.compile(r"(vision|visual|audio|image|multi_modal|mm_projector|speech|patch_embed)")


def is_tower(name: str) -> bool:
    """A parameter or module of a multimodal checkpoint's vision / audio tower."""
    return bool(_TOWER.search(name.lower()))


_MTP = re.compile(r"(^|\.)(mtp|nextn)")
_SSM = re.compile(r"(^|\.)(mamba|linear_attn|mixer|ssm|conv1d|time_mix|channel_mix)(\.|$)")
_ATTENTION = re.compile(r"(attn|attention)")
_MLP = re.compile(r"(^|\.)(mlp|feed_forward|ffn|block_sparse_moe|moe)(\.|$)")
_SHARED = re.compile(r"shared_expert")
_ROUTED = re.compile(r"(^|\.)experts(\.|$)")


def decode_floats(value: Any) -> Any:
    """transformers 5 writes non-finite floats into config.json as {"__float__": "Infinity"}
    (Falcon-H1's time_step_limit) and does not read them back: turn them into floats."""
    if isinstance(value, dict):
        if set(value) == {"__float__"}:
            return float(value["__float__"])
        return {k: decode_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_floats(v) for v in value]
    return value


def hf_config(config: dict[str, Any]) -> Any:
    """transformers' config object for a config.json dict (its non-finite floats included)."""
    from transformers import AutoConfig

    cfg = decode_floats(dict(config))
    cfg.pop("quantization_config", None)  # --method decides, not the checkpoint
    cfg["use_cache"] = False
    return AutoConfig.for_model(**cfg)


def build_on_meta(config: dict[str, Any]) -> Any:
    """The causal LM transformers builds from this config, on `meta` (nothing allocated)."""
    import torch
    from transformers import AutoModelForCausalLM

    auto_model: Any = AutoModelForCausalLM  # untyped classmethods
    with torch.device("meta"):
        return auto_model.from_config(hf_config(config), dtype=torch.bfloat16)


def count_on_meta(config: dict[str, Any], version: str = "") -> ParamRoles:
    """Build the model on meta and count every parameter by role."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_on_meta(config)
        roles = roles_of_model(model, version)
        if roles.expert_tensors:
            from engine.plan.param_lora import parameter_lora_per_rank

            probe = parameter_lora_per_rank(model)
            per_rank, weights, layers, expert_inputs, router_inputs = probe.totals
            roles = replace(
                roles,
                unadaptable=tuple(sorted(set(roles.unadaptable) | probe.dropped)),
                parameter_lora=per_rank,
                parameter_lora_weights=weights,
                parameter_lora_layers=layers,
                parameter_lora_expert_inputs=expert_inputs,
                parameter_lora_router_inputs=router_inputs,
                parameter_lora_parts=probe.parts,
                parameter_lora_targets=probe.targets,
                parameter_lora_fused=probe.fused,
            )
    return roles


def roles_of_model(model: Any, version: str = "") -> ParamRoles:
    """Count a built model's parameters by role (each shared parameter once)."""
    import torch

    from engine.plan.fp32_params import Fp32Census

    census = Fp32Census(model)
    output = model.get_output_embeddings()
    inputs = model.get_input_embeddings()
    tied = output is not None and inputs is not None and output.weight is inputs.weight
    roles = dict.fromkeys(ROLES, 0)
    quantizable = expert_tensors = no_gradient = 0
    groups: dict[tuple[str, bool, bool], list[int]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        kind = type(module).__name__
        # bitsandbytes converts plain Linear (and GPT-2's Conv1D) only: subclasses stay 16-bit.
        quantized = type(module) is torch.nn.Linear or kind == "Conv1D"
        if adaptable_linear(module) and module is not output:
            weight = module.weight
            if kind == "Conv1D":  # GPT-2's transposed linear: weight is (in, out)
                in_f, out_f = weight.shape[0], weight.shape[1]
            else:
                in_f, out_f = module.in_features, module.out_features
            leaf = module_name.rsplit(".", 1)[-1]
            expert = bool(_ROUTED.search(module_name)) and not _SHARED.search(module_name)
            # DSA's indexer runs under no_grad: like a tower, its LoRA gets no gradient
            tower = bool(_TOWER.search(module_name.lower()) or _INDEXER.search(module_name))
            sums = groups.setdefault((leaf, expert, tower), [0, 0, 0, 0])
            # PEFT adapts every instance, each runs on its own input: LoRA's size and saved
            # inputs count instances, the weights count once (Zamba's shared block is one
            # set of weights in a module per hybrid layer)
            sums[0] += 1
            sums[1] += int(in_f)
            sums[2] += int(out_f)
            if id(weight) not in seen:
                sums[3] += int(weight.numel())
                quantizable += int(weight.numel()) if quantized else 0
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            count = int(getattr(param, "logical_numel", param.numel()))
            if module is output and not tied:
                role = "lm_head"
            elif module is output or isinstance(module, torch.nn.Embedding):
                role = "embedding" if not _TOWER.search(module_name) else "towers"
            else:
                role = _role(module_name, kind)
            if role == "routed_experts" and param.dim() == 3:
                expert_tensors += count
            indexer = bool(_INDEXER.search(module_name))
            if indexer:
                no_gradient += count
            roles[role] += count
            census.add(
                f"{module_name}.{param_name}" if module_name else param_name,
                param,
                role,
                count,
                no_gradient=indexer,
                # what the 4-bit count above takes: a plain Linear's weight, the head's not
                quantizable=quantized
                and module is not output
                and adaptable_linear(module)
                and param is module.weight,
            )
    linears = tuple(
        LinearGroup(name, n, in_f, out_f, weights, expert, tower)
        for (name, expert, tower), (n, in_f, out_f, weights) in sorted(groups.items())
    )
    return ParamRoles(
        roles=roles,
        total=sum(roles.values()),
        quantizable=quantizable,
        expert_tensors=expert_tensors,
        linears=linears,
        source="meta",
        transformers_version=version,
        model_class=type(model).__name__,
        unadaptable=peft_unadaptable(model),
        checkpointing=bool(getattr(model, "supports_gradient_checkpointing", True)),
        no_gradient=no_gradient,
        attention_kernels=tuple(
            name
            for name, flag in (
                ("sdpa", "_supports_sdpa"),
                ("flash_attention_2", "_supports_flash_attn"),
            )
            if getattr(model, flag, True)
        ),
        kept_fp32=census.counts,
    )


def _role(module_name: str, kind: str) -> str:
    lowered = module_name.lower()
    leaf = lowered.rsplit(".", 1)[-1]
    if _TOWER.search(lowered):
        return "towers"
    if _MTP.search(lowered):
        return "mtp"
    if "norm" in kind.lower():
        return "norms"
    if _SHARED.search(lowered):
        return "shared_experts"
    if _ROUTED.search(lowered):
        return "routed_experts"
    if "router" in kind.lower() or leaf in ("gate", "router"):
        return "router"
    if _SSM.search(lowered):
        return "ssm"
    if _ATTENTION.search(lowered):
        return "attention"
    if _MLP.search(lowered):
        return "dense_mlp"
    return "other"


def write_seed(path: Path | None = None) -> int:
    """Count every built-in model profile on meta with the installed transformers and write
    engine/plan/param_seed.py. Returns how many profiles were counted."""
    from profiles import model_profiles

    version = transformers_version() or ""
    seed: dict[str, dict[str, Any]] = {}
    for profile in model_profiles():
        config = dict(profile.config)
        try:
            seed[cache_key(config, version)] = count_on_meta(config, version).to_dict()
        except Exception:  # the closed form stands for it, as at run time
            continue
    target = path or Path(__file__).with_name("param_seed.py")
    entries = ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(seed.items()))
    target.write_text(
        '"""Parameter counts of the built-in model profiles by role, one per line (generated:\n'
        '`python -m engine.plan.params`; read by engine/plan/params.py)."""\n'
        "# ruff: noqa: E501\n\n"
        "import json\n"
        "from typing import Any\n\n"
        f"TRANSFORMERS_VERSION = {json.dumps(version)}\n"
        f'SEED: dict[str, dict[str, Any]] = json.loads(r"""{{\n{entries}\n}}""")\n',
        encoding="utf-8",
    )
    return len(seed)


__all__ = [
    "ROLES",
    "LinearGroup",
    "ParamRoles",
    "attached_roles",
    "cache_key",
    "closed_form_reason",
    "count_on_meta",
    "param_roles",
    "peft_target_modules",
    "roles_of_model",
]


if __name__ == "__main__":
    print(f"counted {write_seed()} model profiles")
