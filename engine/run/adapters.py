"""What a run trains, per method: the PEFT config (LoRA and its variants, prefix / prompt /
P-tuning, IA3, llama-adapter), or which of the model's own weights stay trainable (bias-only
BitFit, freeze tuning), the 8-bit base's quantisation, and LoRA+'s optimizer.

Called by engine/run/train.py (and engine/run/stages.py for LoRA); torch and peft are imported
inside the functions.
"""

from __future__ import annotations

from typing import Any

from engine.errors import FtuiError
from engine.plan.methods import bias_refusal, check_architecture
from engine.run.spec import RunSpec
from engine.training_config import TrainingConfig

# P-tuning's encoder: an MLP this wide (PEFT's default is the model's hidden size).
PTUNING_ENCODER_HIDDEN = 128
# llama-adapter: the adaption prompt goes into this many top layers (the paper uses 30 of 32).
LLAMA_ADAPTER_LAYERS = 8


def lora_config(t: TrainingConfig, model: Any = None) -> Any:
    """LoRA with its variants: DoRA, rsLoRA (alpha/sqrt(r)), PiSSA / OLoRA / gaussian init.
    With the model, all-linear leaves out what PEFT cannot adapt (Llama 4's tuple-returning
    router, Falcon-H1's Mamba projections): the planner's own choice of modules."""
    from peft import LoraConfig

    from engine.plan.params import peft_target_modules

    targets: Any
    if model is not None:
        targets = peft_target_modules(model, t.targets)
    else:
        targets = "all-linear" if "all-linear" in t.targets else list(t.targets)
    init: Any = True if t.lora_init == "default" else t.lora_init
    return LoraConfig(
        r=t.rank,
        lora_alpha=t.alpha,
        target_modules=targets,
        use_dora=t.dora,
        use_rslora=t.rslora,
        init_lora_weights=init,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )


def peft_config(t: TrainingConfig, model: Any) -> Any:
    """The PEFT config of an adapter method (TrainingConfig.saves_adapter)."""
    import peft

    model_type, num_layers = model.config.model_type, model.config.num_hidden_layers
    n = t.virtual_tokens
    if t.is_peft:
        return lora_config(t, model)
    if t.method == "prefix":
        return peft.PrefixTuningConfig(num_virtual_tokens=n, task_type="CAUSAL_LM")
    if t.method == "prompt":
        return peft.PromptTuningConfig(num_virtual_tokens=n, task_type="CAUSAL_LM")
    if t.method == "ptuning":
        return peft.PromptEncoderConfig(
            num_virtual_tokens=n, encoder_hidden_size=PTUNING_ENCODER_HIDDEN, task_type="CAUSAL_LM"
        )
    if t.method == "ia3":
        return peft.IA3Config(task_type="CAUSAL_LM")
    if t.method == "llama-adapter":
        check_architecture("llama-adapter", {"model_type": model_type})
        return peft.AdaptionPromptConfig(
            adapter_len=n, adapter_layers=min(LLAMA_ADAPTER_LAYERS, num_layers),
            task_type="CAUSAL_LM",
        )  # fmt: skip
    raise ValueError(f"{t.method} is not an adapter method")


def quantization_config(t: TrainingConfig, compute: Any, storage: Any) -> Any | None:
    """bitsandbytes' config of a quantised base: QLoRA's NF4, or LLM.int8 (--base-bits 8)."""
    from transformers import BitsAndBytesConfig

    if t.method == "qlora":
        return BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=t.double_quant,
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_quant_storage=storage,
        )
    if t.base_bits == 8:
        # Outlier features (|x| > 6) go through a 16-bit matmul, the rest through int8.
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=6.0)  # type: ignore[no-untyped-call]
    return None


def attach(spec: RunSpec, model: Any) -> Any:
    """The model to train with the method's trainable parts: a PeftModel for adapter methods
    (an earlier run's adapter with --from-run), the model itself with only some weights
    trainable for bias / freeze, the model as it is for a full fine-tune."""
    t = spec.training
    if t.saves_adapter:
        from engine.run.stages import attach_adapters

        config = peft_config(t, model)
        return attach_adapters(spec, model, config)
    if t.method == "bias":
        train_only(model, lambda name: name.endswith(".bias"))
        if trainable_count(model) == 0:
            raise FtuiError(*bias_refusal(model.config.model_type))
    elif t.method == "freeze":
        train_only(model, _freeze_selector(model, t))
    return model


def _freeze_selector(model: Any, t: TrainingConfig) -> Any:
    """Freeze tuning: the last N decoder layers (and embeddings / lm_head when asked) train."""
    layers = model.config.num_hidden_layers
    if t.trainable_layers > layers:
        raise FtuiError(
            f"--trainable-layers {t.trainable_layers}: the model has {layers} decoder layers",
            f"use --trainable-layers {layers} or fewer (or --method full for all of them)",
        )
    first = layers - t.trainable_layers
    wanted = {f".layers.{i}." for i in range(first, layers)}
    extra = ("embed_tokens", "lm_head", "wte", "wpe") if t.train_embeddings else ()

    def trains(name: str) -> bool:
        return any(w in f".{name}" for w in wanted) or any(e in name for e in extra)

    return trains


def train_only(model: Any, trains: Any) -> None:
    for name, param in model.named_parameters():
        param.requires_grad_(bool(trains(name)))


def trainable_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def optimizers(spec: RunSpec, model: Any, args: Any) -> tuple[Any, Any]:
    """The Trainer's (optimizer, scheduler): LoRA+'s optimizer (B learns `ratio` times faster
    than A) when asked, else (None, None) for the Trainer's own."""
    t = spec.training
    if not (t.is_peft and t.lora_plus_ratio > 0):
        return None, None
    import torch
    from peft.optimizers import create_loraplus_optimizer

    optimizer = create_loraplus_optimizer(
        model=model,
        optimizer_cls=torch.optim.AdamW,
        lr=spec.hyper.learning_rate,
        loraplus_lr_ratio=t.lora_plus_ratio,
        weight_decay=spec.hyper.weight_decay,
    )
    return optimizer, None


# PiSSA / OLoRA start from the base's own principal directions and subtract them from the base
# weights: the trained adapter is only right on that changed base. ftui keeps the adapter as it
# was before training and saves final/ as the difference, a plain LoRA of rank 2r that loads
# on the unchanged base (beside other adapters, and disabled for the base).
MUTATING_INITS = ("pissa", "olora")


def save_initial_adapter(spec: RunSpec, model: Any, run_dir: Any) -> Any:
    """The untrained PiSSA / OLoRA adapter (None for other methods), to convert final/ with."""
    from pathlib import Path

    t = spec.training
    if not (t.is_peft and t.lora_init in MUTATING_INITS) or spec.from_run:
        return None
    path = Path(run_dir) / "initial-adapter"
    config = model.peft_config["default"]
    config.init_lora_weights = True  # what loading it does: no second decomposition
    try:
        model.save_pretrained(str(path))
    finally:
        config.init_lora_weights = t.lora_init
    return path


def save_converted(model: Any, final_dir: Any, initial: Any) -> None:
    """Overwrite final/'s adapter with its plain-LoRA form (see MUTATING_INITS)."""
    if initial is not None:
        model.save_pretrained(str(final_dir), path_initial_model_for_weight_conversion=str(initial))
