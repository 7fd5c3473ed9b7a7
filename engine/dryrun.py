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
and peft are imported inside the functions only: `import engine.dryrun` stays light.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import math
import re
import time
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from engine.errors import FtuiError
from engine.models import ModelArch
from engine.training_config import ALL_LINEAR, TrainingConfig

GIB = 1024**3
PHASES = ("forward", "backward", "optimizer")

# bitsandbytes constants the stand-ins reproduce.
BNB_4BIT_BLOCKSIZE = 64  # Params4bit default: one absmax per 64 weights
BNB_NESTED_BLOCKSIZE = 256  # double quant: one fp32 absmax per 256 absmax blocks
BNB_OPTIM_BLOCKSIZE = 256  # 8-bit optimizer states: one fp32 absmax per 256 values
BNB_MIN_8BIT_SIZE = 4096  # smaller tensors keep 32-bit optimizer states
BNB_PAGED_MIN_NUMEL = 100_000  # smaller paged states are ordinary device tensors

# HF Trainer's defaults that touch memory.
_LEARNING_RATE = 5e-5
_MAX_GRAD_NORM = 1.0
# Names HF Trainer keeps out of weight decay (its second parameter group).
_NO_DECAY_PATTERNS = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")


class DryRunError(FtuiError):
    """The dry run could not build or train this model/config combination."""


@dataclass(frozen=True)
class DryRunResult:
    peak_allocated_bytes: int  # max live tensor-storage bytes (torch.cuda.max_memory_allocated)
    peak_phase: str  # "forward", "backward" or "optimizer" ("recompute" counts as backward)
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


# -- memory accounting ---------------------------------------------------------------------------


class MemoryLedger:
    """Live storage bytes, counted once per storage from creation to death.

    Pure bookkeeping: `track` takes a storage object (anything with `nbytes()` that supports
    weak references) and a `weakref.finalize` callback subtracts its bytes when it dies. Views
    share their base's storage and are counted once; a storage that grows in place (resize_)
    is re-counted at its new size.
    """

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self.phase = "setup"
        self.phase_peaks: dict[str, int] = {}
        self.allocations = 0
        self._sizes: dict[int, int] = {}

    def track(self, storage: Any) -> None:
        key = id(storage)
        nbytes = int(storage.nbytes())
        old = self._sizes.get(key)
        if old is None:
            if nbytes == 0:
                return
            weakref.finalize(storage, self._release, key)
            self.allocations += 1
        elif old == nbytes:
            return
        self._sizes[key] = nbytes
        self.live += nbytes - (old or 0)
        self._note_peak()

    def _release(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def _note_peak(self) -> None:
        if self.live > self.peak:
            self.peak = self.live
        if self.live > self.phase_peaks.get(self.phase, -1):
            self.phase_peaks[self.phase] = self.live

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self._note_peak()  # what is live on entry belongs to the phase too

    @property
    def tracked_storages(self) -> int:
        return len(self._sizes)


def _tracking_mode(ledger: MemoryLedger) -> Any:
    """A TorchDispatchMode that hands every op output's storage to `ledger`."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    meta = torch.device("meta")

    class _TrackingMode(TorchDispatchMode):  # type: ignore[no-untyped-call]
        def __torch_dispatch__(
            self,
            func: Any,
            types: Any,
            args: Any = (),
            kwargs: Any = None,
        ) -> Any:
            out = func(*args, **(kwargs or {}))
            for leaf in tree_leaves(out):
                if isinstance(leaf, torch.Tensor) and leaf.device != meta:
                    ledger.track(leaf.untyped_storage())
            return out

    return _TrackingMode()  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def track_memory() -> Iterator[MemoryLedger]:
    """Fake tensors plus the tracker: every tensor made inside is counted in the ledger."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    ledger = MemoryLedger()
    with FakeTensorMode(allow_non_fake_inputs=True), _tracking_mode(ledger):
        yield ledger


# -- the dry run ---------------------------------------------------------------------------------


def dry_run(arch: ModelArch, config: TrainingConfig, *, steps: int = 2) -> DryRunResult:
    """Train `steps` steps of `arch` under `config` on fake tensors; report the memory."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1 (got {steps})")
    start = time.perf_counter()
    config.validate()
    _import_stack()
    import torch

    notes: list[str] = []
    with warnings.catch_warnings():
        # Library chatter about a model nobody will train (PEFT calling transformers' renamed
        # gradient-checkpointing API, PEFT's MoE target patterns): not the user's business.
        warnings.simplefilter("ignore")
        setup = _build_model(arch, config, notes)
    model = setup.model
    total_params, trainable_params = _count_params(model)
    if not trainable_params:
        raise DryRunError(
            f"nothing to train: {config.method} left no trainable parameter",
            "check --targets against the model's module names (or use all-linear)",
        )
    ties = _shared_parameters(model)
    _note_distribution(config, notes)

    with track_memory() as ledger:
        model.to_empty(device="cpu")  # new Parameters: collect them only after this
        _retie(ties)
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        optimizer = _make_optimizer(trainable, model, config, notes)
        autocast: Any = (
            torch.autocast("cpu", dtype=setup.autocast_dtype)
            if setup.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        try:
            _train(model, optimizer, [p for _, p in trainable], config, steps, autocast, ledger)
        except Exception as exc:
            raise DryRunError(
                f"the dry run of {arch.name} failed in the {ledger.phase} phase: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                "rely on the analytic estimate for this model/config",
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
    phase_peaks = {phase: ledger.phase_peaks.get(phase, 0) for phase in PHASES}
    peak_phase = max(PHASES, key=lambda phase: phase_peaks[phase])
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


@dataclass
class _Setup:
    model: Any
    autocast_dtype: Any  # torch.dtype or None


_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _build_model(arch: ModelArch, config: TrainingConfig, notes: list[str]) -> _Setup:
    import torch

    compute_dtype = getattr(torch, _DTYPES[config.dtype])
    autocast_dtype = None
    if config.method == "full" and config.dtype != "fp32" and not config.pure_bf16:
        weights_dtype = torch.float32
        autocast_dtype = compute_dtype
        notes.append(
            f"fp32 master weights with mixed precision: autocast to {config.dtype} on CPU "
            "(CPU autocast's op lists differ from CUDA's)"
        )
    else:
        weights_dtype = compute_dtype

    attn = config.attn
    if attn == "flash_attention_2":
        attn = _flash_attention_standin()
        notes.append(
            "flash_attention_2 simulated with SDPA's CPU flash kernel (it saves the same "
            "tensors), with no mask materialised, as FlashAttention takes none"
        )

    model = _from_config(arch, weights_dtype, attn, notes)
    model.train()
    if config.method == "qlora":
        _quantize_4bit(model, compute_dtype, config.double_quant, notes)
    if config.grad_ckpt:
        _enable_checkpointing(model)
    if config.is_peft:
        model = _apply_lora(model, config)
    return _Setup(model=model, autocast_dtype=autocast_dtype)


@functools.cache
def _flash_attention_standin() -> str:
    """An attention implementation for FlashAttention-2 runs: SDPA without a mask tensor.

    FlashAttention takes no mask (causal and sliding windows are kernel arguments) and
    supports logit softcapping (Gemma-2); transformers' "sdpa" would build a mask for sliding
    windows and refuses softcapping. Registered under a name transformers treats as custom, so
    it builds no mask for it; the softcap (elementwise inside the kernel) is dropped.
    """
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def flash_standin(
        module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any
    ) -> Any:
        kwargs.pop("softcap", None)
        kwargs.pop("sliding_window", None)
        return sdpa_attention_forward(module, query, key, value, None, **kwargs)

    name = "ftui_dryrun_attention"  # no "sdpa"/"flash" in it: transformers would check those
    AttentionInterface.register(name, flash_standin)
    return name


def _hf_config_dict(raw: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    cfg = dict(raw)
    # config.json has sliding_window null for Mistral v0.2+; MistralConfig's default is 4096.
    if cfg.get("model_type") == "mistral" and "sliding_window" not in cfg:
        cfg["sliding_window"] = None
    if cfg.pop("quantization_config", None) is not None:
        notes.append("the checkpoint's quantization_config is ignored: --method decides")
    cfg["use_cache"] = False
    return cfg


def _from_config(arch: ModelArch, dtype: Any, attn: str, notes: list[str]) -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    auto_model: Any = AutoModelForCausalLM  # untyped classmethods
    candidates = [arch.config]
    if arch.text_config is not arch.config:
        candidates.append(arch.text_config)
    if arch.is_moe and dtype != torch.bfloat16:
        # transformers' fused experts run torch's grouped_mm, which takes bf16 only; its eager
        # expert loop routes tokens by value (nonzero), which fake tensors cannot follow.
        raise DryRunError(
            f"{arch.name} is a mixture-of-experts model: its experts can only be dry-run "
            f"with bf16 weights (these would be {str(dtype).removeprefix('torch.')})",
            "use --dtype bf16 with --pure-bf16 (full) or LoRA/QLoRA, or rely on the analytic "
            "estimate",
        )
    failure: Exception | None = None
    for index, raw in enumerate(candidates):
        if "model_type" not in raw:
            continue
        try:
            hf_config = AutoConfig.for_model(**_hf_config_dict(raw, notes))
        except Exception as exc:  # unknown model_type, invalid values: any is a no
            failure = exc
            continue
        for implementation in dict.fromkeys((attn, "eager")):
            try:
                with torch.device("meta"):
                    model = auto_model.from_config(
                        hf_config, dtype=dtype, attn_implementation=implementation
                    )
            except Exception as exc:  # unsupported attention, remote code, ...
                failure = exc
                continue
            if implementation != attn:
                notes.append(f"{_attn_label(attn)} not supported by this model: eager used")
            if index:
                notes.append("multimodal model: the text model alone was simulated")
            return model
    raise DryRunError(
        f"transformers cannot build {arch.name} ({arch.model_type}) as a causal LM: {failure}",
        "upgrade transformers, or plan with the analytic estimate only",
    )


def _attn_label(attn: str) -> str:
    return "flash_attention_2" if attn == "ftui_dryrun_attention" else attn


def _enable_checkpointing(model: Any) -> None:
    """Non-reentrant gradient checkpointing, as HF Trainer enables it."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # transformers before the rename
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _lora_targets(model: Any, config: TrainingConfig) -> str | list[str]:
    import torch

    if ALL_LINEAR not in config.targets:
        return list(config.targets)
    extras = [t for t in config.targets if t != ALL_LINEAR]
    if not extras:
        return ALL_LINEAR
    output = model.get_output_embeddings()
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not output and name
    }
    return sorted(names | set(extras))


def _apply_lora(model: Any, config: TrainingConfig) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model

    lora_config = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        target_modules=_lora_targets(model, config),
        use_dora=config.dora,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    if config.method == "qlora":
        parts = _qlora_parts()
        lora_config._register_custom_module({parts.Linear4bit: parts.LoraLinear4bit})
    try:
        with torch.device("meta"):
            return get_peft_model(model, lora_config)
    except ValueError as exc:
        raise DryRunError(
            f"PEFT cannot apply LoRA to {', '.join(config.targets)}: {exc}",
            "use --targets all-linear, or module names this model has",
        ) from exc


def _count_params(model: Any) -> tuple[int, int]:
    """(total, trainable) as the real model counts them: ties once, 4-bit weights unpacked."""
    total = trainable = 0
    for param in model.parameters():  # deduplicated: tied weights once
        count = int(getattr(param, "logical_numel", param.numel()))
        total += count
        if param.requires_grad:
            trainable += count
    return total, trainable


def _shared_parameters(model: Any) -> list[list[tuple[Any, str]]]:
    """Groups of (module, attribute) that hold the same Parameter (tied weights)."""
    owners: dict[int, list[tuple[Any, str]]] = {}
    seen: set[tuple[int, str]] = set()
    for _, module in model.named_modules(remove_duplicate=False):
        for name, param in module._parameters.items():
            if param is None or (id(module), name) in seen:
                continue
            seen.add((id(module), name))
            owners.setdefault(id(param), []).append((module, name))
    return [group for group in owners.values() if len(group) > 1]


def _retie(groups: list[list[tuple[Any, str]]]) -> None:
    """`to_empty` gives every module its own new Parameter: share them again."""
    for (first, first_name), *others in groups:
        keep = first._parameters[first_name]
        for module, name in others:
            module._parameters[name] = keep


def _note_distribution(config: TrainingConfig, notes: list[str]) -> None:
    if config.sharding != "none":
        notes.append(f"sharding is not simulated ({config.sharding}): single-replica peak")
    elif config.num_gpus > 1:
        notes.append("DDP's gradient buckets are not simulated: single-replica peak")
    if config.offload != "none":
        notes.append(f"offload ({config.offload}) is not simulated")


# -- QLoRA: a stand-in for bitsandbytes' Linear4bit ------------------------------------------------


def _quantize_4bit(model: Any, compute_dtype: Any, double_quant: bool, notes: list[str]) -> None:
    """Swap every nn.Linear but the output head for the 4-bit stand-in (as transformers does)."""
    import torch

    linear4bit = _qlora_parts().Linear4bit
    output = model.get_output_embeddings()
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear and child is not output:
                setattr(parent, name, linear4bit.from_linear(child, compute_dtype, double_quant))
                swapped += 1
    big_float_3d = [
        name
        for name, p in model.named_parameters()
        if p.dim() >= 3 and p.is_floating_point() and p.numel() >= BNB_MIN_8BIT_SIZE
    ]
    notes.append(
        f"4-bit layers simulated: {swapped} linear layers as NF4 "
        f"({'double-quantised' if double_quant else 'fp32'} absmax per {BNB_4BIT_BLOCKSIZE}), "
        "dequantised weight materialised in each matmul"
    )
    if big_float_3d:
        notes.append(
            f"{len(big_float_3d)} fused expert tensors are not nn.Linear: kept in "
            f"{str(compute_dtype).removeprefix('torch.')} (not 4-bit)"
        )


@functools.cache
def _qlora_parts() -> Any:
    """The 4-bit stand-in classes, built once (they subclass torch and peft classes)."""
    import types

    import torch
    from peft.tuners.lora.layer import Linear as LoraLinear

    class _MatMul4bit(torch.autograd.Function):
        """bitsandbytes MatMul4Bit's memory behaviour: no input saved, weight dequantised twice."""

        @staticmethod
        def forward(ctx: Any, x: Any, weight: Any, bias: Any, layer: Any) -> Any:
            dequantised = layer.dequantize()
            out = torch.nn.functional.linear(x, dequantised, bias)
            del dequantised
            ctx.layer = layer  # the packed weight persists anyway: nothing saved
            return out

        @staticmethod
        def backward(ctx: Any, grad_output: Any) -> Any:
            grad_input = None
            if ctx.needs_input_grad[0]:
                dequantised = ctx.layer.dequantize().to(grad_output.dtype)
                grad_input = torch.matmul(grad_output, dequantised)
            return grad_input, None, None, None

    class Linear4bit(torch.nn.Linear):
        """Memory layout of bitsandbytes' Linear4bit (NF4): packed uint8 weight plus absmax.

        Values are never computed: on fake tensors only sizes matter. `W_q`/`dequantize` are
        the hooks PEFT uses for quantised weights (DoRA reads the dequantised weight).
        """

        def __init__(
            self,
            in_features: int,
            out_features: int,
            bias: Any,
            compute_dtype: Any,
            double_quant: bool,
            device: Any,
        ) -> None:
            torch.nn.Module.__init__(self)
            self.in_features = in_features
            self.out_features = out_features
            self.compute_dtype = compute_dtype
            self.double_quant = double_quant
            n = in_features * out_features
            packed = torch.empty(((n + 1) // 2, 1), dtype=torch.uint8, device=device)
            self.weight = torch.nn.Parameter(packed, requires_grad=False)
            self.weight.logical_numel = n  # type: ignore[attr-defined]
            if bias is not None:
                bias.requires_grad_(False)
            self.bias = bias
            blocks = math.ceil(n / BNB_4BIT_BLOCKSIZE)
            f32, u8 = torch.float32, torch.uint8
            code = torch.empty(16, dtype=f32, device=device)  # the NF4 code book
            self.register_buffer("code", code, persistent=False)
            if double_quant:  # (the 8-bit code book of the nested absmax is shared: not here)
                nested = math.ceil(blocks / BNB_NESTED_BLOCKSIZE)
                absmax = torch.empty(blocks, dtype=u8, device=device)
                self.register_buffer("absmax", absmax, persistent=False)
                absmax2 = torch.empty(nested, dtype=f32, device=device)
                self.register_buffer("absmax2", absmax2, persistent=False)
                offset = torch.empty((), dtype=f32, device=device)
                self.register_buffer("offset", offset, persistent=False)
            else:
                absmax = torch.empty(blocks, dtype=f32, device=device)
                self.register_buffer("absmax", absmax, persistent=False)

        @classmethod
        def from_linear(cls, linear: Any, compute_dtype: Any, double_quant: bool) -> Any:
            return cls(
                linear.in_features,
                linear.out_features,
                linear.bias,
                compute_dtype,
                double_quant,
                linear.weight.device,
            )

        @property
        def W_q(self) -> Any:  # the attribute name PEFT looks for quantised weights
            return self.weight

        def dequantize(self) -> Any:
            """bnb's dequantize_4bit: fp32 absmax (nested: decoded + offset), then the weight."""
            absmax: Any = self.absmax
            if self.double_quant:
                offset: Any = self.offset
                absmax = absmax.to(torch.float32) + offset
            weight = torch.empty(
                (self.out_features, self.in_features),
                dtype=self.compute_dtype,
                device=self.weight.device,
            )
            del absmax
            return weight

        def forward(self, x: Any) -> Any:
            input_dtype = x.dtype
            x = x.to(self.compute_dtype)
            bias: Any = self.bias
            if bias is not None:
                bias = bias.to(self.compute_dtype)
            matmul: Any = _MatMul4bit.apply
            return matmul(x, self.weight, bias, self).to(input_dtype)

    class LoraLinear4bit(LoraLinear):
        """PEFT's lora.bnb.Linear4bit forward: the base result is cloned before adding LoRA."""

        def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
            self._check_forward_args(x, *args, **kwargs)  # type: ignore[no-untyped-call]
            kwargs.pop("adapter_names", None)
            kwargs.pop("alora_offsets", None)
            if self.disable_adapters or self.merged:
                return self.base_layer(x, *args, **kwargs)
            result = self.base_layer(x, *args, **kwargs)
            result = result.clone()  # "defensively clone" (PEFT's bnb layer)
            for active in self.active_adapters:
                if active not in self.lora_A:
                    continue
                lora_a: Any = self.lora_A[active]
                lora_b = self.lora_B[active]
                dropout = self.lora_dropout[active]
                scaling = self.scaling[active]
                requires_conversion = not torch.is_autocast_enabled()
                expected_dtype = result.dtype
                if requires_conversion:
                    x = self._cast_input_dtype(x, lora_a.weight.dtype)
                if active not in self.lora_variant:
                    output = lora_b(lora_a(dropout(x))) * scaling
                    if requires_conversion:
                        output = output.to(expected_dtype)
                    result = result + output
                else:
                    result = self.lora_variant[active].forward(
                        self, active_adapter=active, x=x, result=result, **kwargs
                    )
                    if requires_conversion:
                        result = result.to(expected_dtype)
            return result

    return types.SimpleNamespace(Linear4bit=Linear4bit, LoraLinear4bit=LoraLinear4bit)


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
    bits = 8 if optim.endswith("8bit") else 32
    paged = optim.startswith("paged_")
    # HF Trainer keeps nn.Embedding weights on 32-bit states with 8-bit optimizers.
    embedding_ids = {
        id(p)
        for module in model.modules()
        if isinstance(module, torch.nn.Embedding)
        for p in module.parameters(recurse=False)
    }
    layout = (
        "uint8 states + fp32 absmax per 256 values; fp32 for embeddings and small tensors"
        if bits == 8
        else "two fp32 states per parameter"
    )
    notes.append(f"bitsandbytes {optim} simulated by its state layout ({layout})")
    return _bnb_optimizer_class()(
        groups, lr=_LEARNING_RATE, bits=bits, paged=paged, fp32_ids=embedding_ids
    )


@functools.cache
def _bnb_optimizer_class() -> Any:
    import torch

    class Bnb2StateStandIn(torch.optim.Optimizer):
        """bitsandbytes Adam-style optimizer's state memory; the update is in place (no temps)."""

        def __init__(
            self,
            params: Any,
            *,
            lr: float,
            bits: int,
            paged: bool,
            fp32_ids: set[int],
        ) -> None:
            super().__init__(params, {"lr": lr})
            self.bits = bits
            self.paged = paged
            self.fp32_ids = fp32_ids
            self.paged_bytes = 0

        def _init_state(self, p: Any) -> dict[str, Any]:
            n = p.numel()
            eight_bit = self.bits == 8 and n >= BNB_MIN_8BIT_SIZE and id(p) not in self.fp32_ids
            dtype = torch.uint8 if eight_bit else torch.float32
            state: dict[str, Any] = {"step": 0}
            state["state1"] = torch.zeros_like(p, dtype=dtype)
            state["state2"] = torch.zeros_like(p, dtype=dtype)
            if self.paged and n >= BNB_PAGED_MIN_NUMEL:
                self.paged_bytes += 2 * n * (1 if eight_bit else 4)
            if eight_bit:
                blocks = math.ceil(n / BNB_OPTIM_BLOCKSIZE)
                state["absmax1"] = torch.zeros((blocks,), dtype=torch.float32, device=p.device)
                state["absmax2"] = torch.zeros((blocks,), dtype=torch.float32, device=p.device)
            return state

        @torch.no_grad()
        def step(self, closure: Any = None) -> Any:
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    if p not in self.state or not self.state[p]:
                        self.state[p] = self._init_state(p)
                    self.state[p]["step"] += 1
                    p.add_(p.grad, alpha=-group["lr"])  # stands for the fused in-place kernel
            return None

    return Bnb2StateStandIn
