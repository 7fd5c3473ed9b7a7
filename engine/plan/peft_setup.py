"""What a run trains, per method, as one definition for the real run (engine/run/adapters.py)
and the dry run (engine/plan/dryrun): the PEFT config of an adapter method (LoRA and its
variants, prefix / prompt / P-tuning, IA3, llama-adapter), or which of the model's own weights
stay trainable (bias-only BitFit, freeze tuning).

peft is imported inside the functions only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.errors import FtuiError
from engine.plan.method_memory import LLAMA_ADAPTER_LAYERS, PTUNING_ENCODER_HIDDEN
from engine.plan.methods import check_architecture
from engine.plan.params import is_tower
from engine.training_config import TrainingConfig

# P-tuning's encoder width (PEFT's default is the model's hidden size) and llama-adapter's
# layer count (the paper uses 30 of 32) are in engine/plan/method_memory.py, which sizes them.
__all__ = [
    "LLAMA_ADAPTER_LAYERS",
    "PTUNING_ENCODER_HIDDEN",
    "decoder_layers",
    "lora_config",
    "peft_config",
    "train_only",
    "trainable_count",
    "trainable_selector",
]
# freeze --train-embeddings: the module names that train with the top layers.
EMBEDDING_NAMES = ("embed_tokens", "lm_head", "wte", "wpe")


def decoder_layers(model: Any) -> int:
    """The language model's decoder layers. A multimodal config (Gemma 3, GOT-OCR2, Fuyu)
    keeps them in its text sub-config; the outer config has no `num_hidden_layers`."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for cfg in (text, config):
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            value = getattr(cfg, key, None)
            if isinstance(value, int):
                return value
    raise FtuiError(
        f"the {config.model_type} config names no decoder layer count",
        "use a method that does not pick layers (lora, full)",
    )


def lora_config(t: TrainingConfig, model: Any = None, *, init: Any = None) -> Any:
    """LoRA with its variants: DoRA, rsLoRA (alpha/sqrt(r)), PiSSA / OLoRA / gaussian init.
    With the model, all-linear leaves out what PEFT cannot adapt (Llama 4's tuple-returning
    router, Falcon-H1's Mamba projections): the planner's own choice of modules. `init`
    overrides the initialisation (the dry run's weights hold no values to decompose)."""
    from peft import LoraConfig

    from engine.plan.params import peft_target_modules

    targets: Any
    if model is not None:
        targets = peft_target_modules(model, t.targets)
    else:
        targets = "all-linear" if "all-linear" in t.targets else list(t.targets)
    if init is None:
        init = True if t.lora_init == "default" else t.lora_init
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


def peft_config(t: TrainingConfig, model: Any, *, init: Any = None) -> Any:
    """The PEFT config of an adapter method (TrainingConfig.saves_adapter)."""
    import peft

    model_type, num_layers = model.config.model_type, decoder_layers(model)
    n = t.virtual_tokens
    if t.is_peft:
        return lora_config(t, model, init=init)
    if t.method == "prefix":
        return peft.PrefixTuningConfig(num_virtual_tokens=n, task_type="CAUSAL_LM")
    if t.method == "prompt":
        return peft.PromptTuningConfig(num_virtual_tokens=n, task_type="CAUSAL_LM")
    if t.method == "ptuning":
        return peft.PromptEncoderConfig(
            num_virtual_tokens=n, encoder_hidden_size=PTUNING_ENCODER_HIDDEN, task_type="CAUSAL_LM"
        )
    if t.method == "ia3":
        check_architecture("ia3", {"model_type": model_type})
        return peft.IA3Config(task_type="CAUSAL_LM")
    if t.method == "llama-adapter":
        check_architecture("llama-adapter", {"model_type": model_type})
        return peft.AdaptionPromptConfig(
            adapter_len=n, adapter_layers=min(LLAMA_ADAPTER_LAYERS, num_layers),
            task_type="CAUSAL_LM",
        )  # fmt: skip
    raise ValueError(f"{t.method} is not an adapter method")


def trainable_selector(t: TrainingConfig, num_layers: int) -> Callable[[str], bool]:
    """Which of the model's own parameters train (by name) for bias / freeze."""
    if t.method == "bias":
        return lambda name: name.endswith(".bias")
    if t.method != "freeze":
        raise ValueError(f"{t.method} trains no weights of the model's own")
    if t.trainable_layers > num_layers:
        raise FtuiError(
            f"--trainable-layers {t.trainable_layers}: the model has {num_layers} decoder layers",
            f"use --trainable-layers {num_layers} or fewer (or --method full for all of them)",
        )
    first = num_layers - t.trainable_layers
    wanted = tuple(f".layers.{i}." for i in range(first, num_layers))
    extra = EMBEDDING_NAMES if t.train_embeddings else ()

    def trains(name: str) -> bool:
        if is_tower(name):  # a vision / audio tower's layers are not the decoder's
            return False
        return any(w in f".{name}" for w in wanted) or any(e in name for e in extra)

    return trains


def train_only(model: Any, trains: Callable[[str], bool]) -> None:
    """Only the parameters `trains` names keep requires_grad."""
    for name, param in model.named_parameters():
        param.requires_grad_(bool(trains(name)))


def trainable_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
