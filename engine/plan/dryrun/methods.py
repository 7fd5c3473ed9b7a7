"""The dry run's PEFT family: each method set up on the meta-device model exactly as a real
run sets it up, from the same definitions (engine/plan/peft_setup.py): LoRA and its variants
(on a 16-, 8- or 4-bit base), prefix / prompt / P-tuning, IA3, llama-adapter through PEFT,
bias / freeze by which of the model's own weights keep requires_grad.

torch and peft are imported inside the functions only.
"""

from __future__ import annotations

from typing import Any

from engine.errors import FtuiError
from engine.plan.methods import bias_refusal
from engine.plan.peft_setup import (
    decoder_layers,
    peft_config,
    train_only,
    trainable_count,
    trainable_selector,
)
from engine.training_config import TrainingConfig


def apply_method(model: Any, config: TrainingConfig, notes: list[str], error: Any) -> Any:
    """The model with `config.method`'s trainable parts (a PeftModel for adapter methods).
    `error` is the exception class to raise when PEFT refuses."""
    import torch
    from peft import get_peft_model

    if config.method in ("bias", "freeze"):
        try:
            trains = trainable_selector(config, decoder_layers(model))
        except FtuiError as exc:  # more --trainable-layers than the model has
            raise error(exc.message, exc.fix) from exc
        train_only(model, trains)
        if config.method == "bias" and trainable_count(model) == 0:
            raise error(*bias_refusal(model.config.model_type))
        return model
    if not config.saves_adapter:
        return model  # full fine-tune
    init = None
    if config.is_peft and config.lora_init != "default":
        # PiSSA / OLoRA decompose the weights' values and gaussian draws them: the dry run's
        # weights hold none. The adapter's shapes (and the memory) are the same.
        init = True
        notes.append(f"--init {config.lora_init}: adapters of the same shapes, default init")
    try:
        peft_cfg = peft_config(config, model, init=init)
    except FtuiError as exc:  # the architecture cannot take the method
        raise error(exc.message, exc.fix) from exc
    if config.method == "qlora":
        from engine.plan.dryrun.bnb import register_lora_4bit

        register_lora_4bit(peft_cfg)
    elif config.base_bits == 8:
        from engine.plan.dryrun.int8 import register_lora_8bit

        register_lora_8bit(peft_cfg)
    try:
        with torch.device("meta"):
            peft_model = get_peft_model(model, peft_cfg)
    except Exception as exc:  # PEFT refuses targets, or a module type it cannot wrap
        if config.is_peft:
            raise error(
                f"PEFT cannot apply LoRA to {', '.join(config.targets)}: {_line(exc)}",
                "use --targets all-linear, or module names this model has",
            ) from exc
        raise error(
            f"PEFT cannot apply {config.method} to this model: {_line(exc)}",
            "use --method lora, or rely on the analytic estimate",
        ) from exc
    _unregister_shared_embeddings(peft_model)
    return peft_model


def _unregister_shared_embeddings(peft_model: Any) -> None:
    """Prompt learning registers the base's input embeddings a second time (`word_embeddings`):
    materialising the model would visit that module twice. Kept as a plain attribute, the
    forward uses the same module, and it is materialised once, inside the base model."""
    modules = peft_model._modules
    shared = modules.get("word_embeddings")
    if shared is not None and shared is peft_model.get_input_embeddings():
        del modules["word_embeddings"]
        object.__setattr__(peft_model, "word_embeddings", shared)


def _line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:240]}" if lines else type(exc).__name__
