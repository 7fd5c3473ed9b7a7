"""The dry run's model: the real transformers model on the meta device, set up for training.

`build_model` builds the model from its config.json the way a Hugging Face Trainer run sets it
up: weights dtype (fp32 master weights under autocast for mixed-precision full, bias and
freeze runs), attention implementation (FlashAttention-2 as a mask-free SDPA stand-in; SDPA
with a mask as CUDA's memory-efficient kernel runs it, engine/plan/dryrun/sdpa.py), the
4-bit stand-in for QLoRA (engine/plan/dryrun/bnb.py; 8-bit: int8.py), the method as a real run
sets it up (engine/plan/dryrun/methods.py), then non-reentrant gradient checkpointing.
Everything stays on `meta`: the driver (engine/plan/dryrun/entry.py) materialises it as fake
tensors.
`count_params`, `shared_parameters` and `retie` read and restore what the model shares.
torch, transformers and peft are imported inside the functions only.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from engine.errors import FtuiError
from engine.models import ModelArch
from engine.plan.dryrun.bnb import quantize_4bit
from engine.plan.params import decode_floats
from engine.training_config import TrainingConfig


class DryRunError(FtuiError):
    """The dry run could not build or train this model/config combination."""


def one_line(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:240]}" if lines else type(exc).__name__


@dataclass
class ModelSetup:
    """A built model (still on `meta`) and the dtype its steps autocast to (None: none)."""

    model: Any
    autocast_dtype: Any  # torch.dtype or None


_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# The FlashAttention-2 stand-in's registered name: no "sdpa"/"flash" in it, as transformers
# would check those.
_FLASH_STANDIN = "ftui_dryrun_attention"


def build_model(arch: ModelArch, config: TrainingConfig, notes: list[str]) -> ModelSetup:
    """`arch` on `meta`, set up for `config` as the Trainer would; approximations go to notes."""
    import torch

    compute_dtype = getattr(torch, _DTYPES[config.dtype])
    autocast_dtype = None
    master = config.method in ("full", "bias", "freeze")  # the real run's fp32 master weights
    if master and config.dtype != "fp32" and not config.pure_bf16:
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
    elif attn == "sdpa":
        from engine.plan.dryrun.sdpa import register_masked_sdpa

        register_masked_sdpa()  # a mask takes CUDA's memory-efficient kernel, not CPU's math
    from engine.plan.dryrun.sdpa import unpacked_sequences

    unpacked_sequences()  # no mask where transformers builds none on a GPU

    model = _from_config(arch, weights_dtype, attn, notes)
    model.train()
    if config.method == "qlora":
        quantize_4bit(model, compute_dtype, config.double_quant, notes)
    elif config.base_bits == 8:
        from engine.plan.dryrun.int8 import quantize_8bit

        quantize_8bit(model, notes)
    if config.method != "full":  # as engine/run/train.py: the method, then input grads
        from engine.plan.dryrun.methods import apply_method

        model = apply_method(model, config, notes, DryRunError)
        if config.grad_ckpt:
            model.enable_input_require_grads()
    if config.grad_ckpt:  # the Trainer enables it last, on the model it was given
        _enable_checkpointing(model)
    return ModelSetup(model=model, autocast_dtype=autocast_dtype)


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

    AttentionInterface.register(_FLASH_STANDIN, flash_standin)
    return _FLASH_STANDIN


def _hf_config_dict(raw: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    cfg: dict[str, Any] = decode_floats(dict(raw))  # inf/nan as transformers 5 writes them
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
        f"transformers cannot build {arch.name} ({arch.model_type}) as a causal LM: "
        f"{one_line(failure) if failure else 'no model_type'}",
        "upgrade transformers, or plan with the analytic estimate only",
    )


def _attn_label(attn: str) -> str:
    return "flash_attention_2" if attn == _FLASH_STANDIN else attn


def _enable_checkpointing(model: Any) -> None:
    """Non-reentrant gradient checkpointing, as HF Trainer enables it."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # transformers before the rename
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def count_params(model: Any) -> tuple[int, int]:
    """(total, trainable) as the real model counts them: ties once, 4-bit weights unpacked."""
    total = trainable = 0
    for param in model.parameters():  # deduplicated: tied weights once
        count = int(getattr(param, "logical_numel", param.numel()))
        total += count
        if param.requires_grad:
            trainable += count
    return total, trainable


def shared_parameters(model: Any) -> list[list[tuple[Any, str]]]:
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


def retie(groups: list[list[tuple[Any, str]]]) -> None:
    """`to_empty` gives every module its own new Parameter: share them again."""
    for (first, first_name), *others in groups:
        keep = first._parameters[first_name]
        for module, name in others:
            module._parameters[name] = keep
