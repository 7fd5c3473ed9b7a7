"""Training stages beyond SFT: pre-training from scratch, starting from an earlier run, and the
preference objectives (DPO, ORPO, KTO, SimPO) through TRL's trainers.

`engine.run.train` calls in here at three points: loading the weights (`load_weights`: random
weights from the config for `init: scratch`, a full run's final model for `from_run`), putting
adapters on (`attach_adapters`: an earlier run's adapter, trainable, or none yet for a
preference stage, whose TRL trainer adds them) and building the trainer of a preference stage
(`preference_trainer`).

The reference model of DPO and KTO:
- LoRA / QLoRA with fresh adapters: TRL computes the reference log-probs with the adapters
  disabled, on the same weights (no second copy).
- LoRA / QLoRA from an earlier run (`from_run`): the reference is that run's model (its adapter
  kept frozen by TRL as a second adapter, "ref"); DPO's reference is the SFT policy.
- full fine-tune: a frozen copy of the weights (`reference: auto|copy`), or
  `reference: precompute`: the reference log-probs of the whole dataset computed once before
  training, after which no reference stays in memory.
ORPO and SimPO have no reference model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import FtuiError
from engine.run.rundir import RunDir
from engine.run.spec import RunSpec

# Where TRL keeps each stage's trainer (ORPO and CPO, which runs SimPO, are experimental).
TRAINERS = {
    "dpo": ("trl", "DPOTrainer", "DPOConfig"),
    "kto": ("trl", "KTOTrainer", "KTOConfig"),
    "orpo": ("trl.experimental.orpo", "ORPOTrainer", "ORPOConfig"),
    "simpo": ("trl.experimental.cpo", "CPOTrainer", "CPOConfig"),
}


def from_run_dir(spec: RunSpec) -> Path | None:
    """The earlier run's `final/` folder (adapter or full model) a run starts from."""
    if not spec.from_run:
        return None
    final = Path(spec.from_run) / "final"
    if not final.is_dir():
        raise FtuiError(
            f"{spec.from_run} has no final model (final/)",
            "start from a completed run, or export a checkpoint and use it as --model",
        )
    return final


def is_adapter(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file()


def load_weights(spec: RunSpec, source: str, local: bool, kwargs: dict[str, Any]) -> Any:
    """The model to train: from its weights, from its config with random weights (scratch),
    or an earlier full fine-tune's final model."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if spec.init == "scratch":
        config = AutoConfig.from_pretrained(source, local_files_only=local)
        kwargs = {k: v for k, v in kwargs.items() if k in ("dtype", "attn_implementation")}
        return AutoModelForCausalLM.from_config(config, **kwargs)  # type: ignore[no-untyped-call]
    start = from_run_dir(spec)
    if start is not None and not is_adapter(start):
        return AutoModelForCausalLM.from_pretrained(str(start), local_files_only=True, **kwargs)
    return AutoModelForCausalLM.from_pretrained(source, local_files_only=local, **kwargs)


def lora_config(spec: RunSpec, model: Any = None) -> Any:
    from engine.run.adapters import lora_config

    return lora_config(spec.training, model)  # rsLoRA, PiSSA/OLoRA/gaussian init too


def attach_adapters(spec: RunSpec, model: Any, lora: Any) -> Any:
    """LoRA on the model: an earlier run's adapter (trainable), fresh ones, or none yet for a
    preference stage (its trainer adds them, and disables them for the reference)."""
    from peft import PeftModel, get_peft_model

    start = from_run_dir(spec)
    if start is not None:
        if not is_adapter(start):
            raise FtuiError(
                f"{spec.from_run} trained the full model: it has no adapter to continue",
                "use --method full to start from it, or start from a LoRA/QLoRA run",
            )
        return PeftModel.from_pretrained(model, str(start), is_trainable=True)
    if spec.is_preference:
        return model
    return get_peft_model(model, lora)


def _trainer_class(stage: str) -> tuple[Any, Any]:
    import importlib

    module_name, trainer_name, config_name = TRAINERS[stage]
    module = importlib.import_module(module_name)
    trainer_cls, config_cls = getattr(module, trainer_name), getattr(module, config_name)
    if stage in ("orpo", "simpo"):
        trainer_cls = _counting_pairs(trainer_cls)
    return trainer_cls, config_cls


def _counting_pairs(base: Any) -> Any:
    """ORPO's and CPO's batches hold chosen_/rejected_ inputs, not `input_ids`: count their
    non-padding tokens for tokens/s (the Trainer would warn every step and count none)."""

    class Counting(base):  # type: ignore[misc, valid-type]
        def _track_num_input_tokens(self, inputs: Any) -> None:
            masks = [inputs[k] for k in ("chosen_attention_mask", "rejected_attention_mask")
                     if k in inputs]  # fmt: skip
            if not masks:
                return
            import torch

            seen = torch.as_tensor(sum(int(m.sum()) for m in masks), device=self.args.device)
            self.state.num_input_tokens_seen += self.accelerator.gather(seen).sum().item()

    Counting.__name__ = base.__name__
    return Counting


def stage_arguments(spec: RunSpec) -> dict[str, Any]:
    """The TRL config fields of the run's stage."""
    stage, p, t = spec.stage, spec.preference, spec.training
    beta, loss = p.beta_for(stage), p.loss_for(stage)
    # TRL truncates prompt + answer to max_length; ftui has already cut the prompt.
    args: dict[str, Any] = {"beta": beta, "max_length": t.seq_len}
    if stage == "dpo":
        args["loss_type"] = [loss]
    elif stage == "kto":
        args["loss_type"] = loss
    elif stage == "simpo":
        args["loss_type"] = "simpo"
        args["cpo_alpha"] = 1.0 if loss == "cpo_simpo" else 0.0  # pure SimPO: no NLL term
    if stage in ("dpo", "kto"):
        args["precompute_ref_log_probs"] = t.reference_kind == "precompute"
    return args


def preference_datasets(spec: RunSpec, tokenizer: Any) -> tuple[Any, Any]:
    from engine.data.preference import build_preference_datasets

    train, evaluation, _report = build_preference_datasets(
        Path(spec.data),
        tokenizer,
        stage=spec.stage,
        fmt=spec.data_format,
        seq_len=spec.training.seq_len,
        max_prompt_len=spec.preference.prompt_len_for(spec.training.seq_len),
        eval_fraction=spec.eval_fraction,
        seed=spec.hyper.seed,
        skip_invalid=spec.skip_invalid,
    )
    return train, evaluation


def preference_trainer(
    spec: RunSpec, run: RunDir, model: Any, tokenizer: Any, device: str, callback: Any
) -> Any:
    """The TRL trainer of a preference stage, with ftui's callback and the stage's knobs."""
    from engine.run.train import training_arguments

    train_ds, eval_ds = preference_datasets(spec, tokenizer)
    trainer_cls, config_cls = _trainer_class(spec.stage)
    args = training_arguments(
        spec, run, device, eval_ds is not None, config_class=config_cls, **stage_arguments(spec)
    )
    fresh_adapters = spec.training.is_peft and not spec.from_run
    kwargs: dict[str, Any] = {
        "model": model,
        "args": args,
        "train_dataset": train_ds,
        "eval_dataset": eval_ds,
        "processing_class": tokenizer,
        "callbacks": [callback],
        "peft_config": lora_config(spec, model) if fresh_adapters else None,
    }
    if spec.stage in ("dpo", "kto"):
        kwargs["ref_model"] = None  # adapters: disabled for the reference; full: TRL's copy
    trainer = trainer_cls(**kwargs)
    return trainer
