"""What a run trains, per method: the PEFT config (LoRA and its variants, prefix / prompt /
P-tuning, IA3, llama-adapter), or which of the model's own weights stay trainable (bias-only
BitFit, freeze tuning), both from engine/plan/peft_setup.py (the dry run builds the same), the
8-bit base's quantisation, and LoRA+'s optimizer.

Called by engine/run/train.py (and engine/run/stages.py for LoRA); torch and peft are imported
inside the functions.
"""

from __future__ import annotations

from typing import Any

from engine.errors import FtuiError
from engine.plan.methods import bias_refusal
from engine.plan.peft_setup import (
    LLAMA_ADAPTER_LAYERS,
    PTUNING_ENCODER_HIDDEN,
    decoder_layers,
    lora_config,
    peft_config,
    train_only,
    trainable_count,
    trainable_selector,
)
from engine.run.spec import RunSpec
from engine.training_config import TrainingConfig

# The PEFT configs and trainable sets live in engine/plan/peft_setup.py, shared with the dry run.
__all__ = [
    "LLAMA_ADAPTER_LAYERS",
    "PTUNING_ENCODER_HIDDEN",
    "attach",
    "lora_config",
    "optimizers",
    "peft_config",
    "quantization_config",
    "train_only",
    "trainable_count",
]


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
    if t.method in ("bias", "freeze"):
        train_only(model, trainable_selector(t, decoder_layers(model)))
        if t.method == "bias" and trainable_count(model) == 0:
            raise FtuiError(*bias_refusal(model.config.model_type))
    return model


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
