"""The training entry point, run by the launcher in every rank.

    python -m engine.run.train --run-dir D


Builds tokenizer, model (bf16/fp16, or 4-bit NF4 through bitsandbytes for QLoRA), PEFT
adapters, datasets and the HF Trainer from `spec.yaml`, and trains with ftui's callback.
Exit codes: 0 done (or stopped on request), 3 out of memory, 4 NaN loss, 1 other errors.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from engine.run.callbacks import on_stop_signal, signalled
from engine.run.rundir import RunDir
from engine.run.spec import RunSpec

EXIT_OOM, EXIT_NAN, EXIT_ERROR = 3, 4, 1


def _device(spec: RunSpec) -> str:
    import torch

    if spec.device == "cpu":
        return "cpu"
    if spec.device == "cuda" or torch.cuda.is_available():
        return "cuda"
    return "cpu"


def _torch_dtype(spec: RunSpec, device: str) -> Any:
    import torch

    if device == "cpu":
        return torch.float32  # CPU runs (tests, demo) compute in fp32
    t = spec.training
    if t.method in ("full", "bias", "freeze") and not t.pure_bf16 and t.dtype != "fp32":
        return torch.float32  # fp32 master weights; the Trainer autocasts to bf16/fp16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[t.dtype]


def load_model_and_tokenizer(spec: RunSpec, device: str, local_rank: int) -> tuple[Any, Any]:
    import torch
    from transformers import AutoTokenizer

    source = spec.model_path or spec.model
    local = spec.model_path is not None
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    t = spec.training
    dtype = _torch_dtype(spec, device)
    attn = t.attn
    if device == "cpu" and attn == "flash_attention_2":
        attn = "sdpa"
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": attn}
    from engine.run.adapters import attach, quantization_config

    compute = torch.float32 if device == "cpu" else dtype
    storage = compute if t.sharding in ("fsdp", "zero3") else torch.uint8
    quantization = quantization_config(t, compute, storage)  # QLoRA's 4 bits, or 8 (LLM.int8)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        if device == "cuda" and t.sharding == "none":
            kwargs["device_map"] = {"": local_rank}
        elif device == "cpu":
            kwargs["device_map"] = {"": "cpu"}
    from engine.run.stages import load_weights

    model = load_weights(spec, source, local, kwargs)  # scratch or an earlier run: see stages
    if t.method != "full":
        from peft import prepare_model_for_kbit_training

        if quantization is not None and t.kbit_upcast:
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=t.grad_ckpt,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )  # fmt: skip
        # The adapters' A matrices start random: seed before they are made (the Trainer only
        # seeds when it is built, after this), so one spec trains the same adapter every time.
        from transformers import set_seed

        set_seed(spec.hyper.seed)
        model = attach(spec, model)  # the method's trainable parts: engine/run/adapters.py
        if t.grad_ckpt:
            model.enable_input_require_grads()
    return model, tokenizer


def training_arguments(
    spec: RunSpec,
    run: RunDir,
    device: str,
    has_eval: bool,
    config_class: Any = None,
    **stage_fields: Any,
) -> Any:
    """TrainingArguments, or a TRL config (`config_class`) with its stage's fields."""
    from transformers import TrainingArguments

    t, h = spec.training, spec.hyper
    on_cpu = device == "cpu"
    kwargs: dict[str, Any] = {
        "output_dir": str(run.checkpoints),
        "per_device_train_batch_size": t.batch,
        "per_device_eval_batch_size": t.batch,
        "gradient_accumulation_steps": t.grad_accum,
        "num_train_epochs": h.epochs,
        "max_steps": h.max_steps,
        "learning_rate": h.learning_rate,
        "lr_scheduler_type": h.lr_scheduler,
        "warmup_steps": h.warmup_steps if h.warmup_steps > 0 else h.warmup_ratio,
        "weight_decay": h.weight_decay,
        "max_grad_norm": h.max_grad_norm,
        "logging_steps": h.logging_steps,
        "save_strategy": "steps",
        "save_steps": h.save_steps,
        "save_total_limit": h.save_total_limit,
        "seed": h.seed,
        "data_seed": h.seed,
        "report_to": h.report_to,
        "optim": t.optim,
        "gradient_checkpointing": t.grad_ckpt,
        "gradient_checkpointing_kwargs": {"use_reentrant": False} if t.grad_ckpt else None,
        "include_num_input_tokens_seen": "non_padding",
        "use_cpu": on_cpu,
        "bf16": not on_cpu and t.dtype == "bf16",
        "fp16": not on_cpu and t.dtype == "fp16",
        "disable_tqdm": True,
        "remove_unused_columns": False,
        "dataloader_num_workers": 0,
        # Not the Trainer's own SIGTERM checkpointing: it stopped the loop without telling the
        # callback (the run then saved final/ and ended "completed"), and saved from a timer
        # thread. ftui's SIGTERM handler sets a flag; the callback stops at the step's end.
        "enable_jit_checkpoint": False,
    }
    if on_cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        kwargs["ddp_backend"] = "gloo"
    if has_eval:
        kwargs["eval_strategy"] = "steps" if h.eval_steps > 0 else "epoch"
        if h.eval_steps > 0:
            kwargs["eval_steps"] = h.eval_steps
    if t.sharding.startswith("zero"):
        kwargs["deepspeed"] = str(run.path / "deepspeed.json")
    elif t.sharding == "fsdp" and spec.distributed.launcher != "accelerate":
        kwargs["fsdp"] = "full_shard auto_wrap" + (" offload" if t.offload == "params" else "")
        kwargs["fsdp_config"] = {"use_orig_params": True, "cpu_ram_efficient_loading": True}
    if t.num_gpus > 1 or spec.distributed.nodes > 1:
        kwargs["ddp_find_unused_parameters"] = False
    return (config_class or TrainingArguments)(**kwargs, **stage_fields)


def train(spec: RunSpec, run: RunDir, *, resume_from: str | None = None) -> int:
    import torch

    from engine.run.callbacks import make_callback, write_final_marker

    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = _device(spec)
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    model, tokenizer = load_model_and_tokenizer(spec, device, local_rank)
    from engine.run.adapters import save_converted, save_initial_adapter

    initial = save_initial_adapter(spec, model, run.path) if local_rank == 0 else None
    callback = make_callback(
        run,
        rank=rank,
        world_size=world,
        probe=spec.probe and device == "cuda",
        method=spec.training.method,
        attn=spec.training.attn,
    )
    if spec.is_preference:  # DPO, ORPO, KTO, SimPO: TRL's trainers (engine/run/stages.py)
        from engine.run.stages import preference_trainer

        _inject_faults(spec)
        trainer = preference_trainer(spec, run, model, tokenizer, device, callback)
    else:
        trainer = _sft_trainer(spec, run, model, tokenizer, device, callback)
    node_main = local_rank == 0
    at_end = checkpoint_at_end(resume_from)
    if at_end is None:
        trainer.train(resume_from_checkpoint=resume_from)
    else:  # the Trainer would train one step past max_steps: take the model as saved
        _take_checkpoint(trainer, Path(str(resume_from)), run, at_end, write=node_main)
    state = run.read_state()
    if state.get("failure") == "nan":
        return EXIT_NAN
    if callback.stop_requested or signalled["signal"]:
        if node_main:
            _record_stop(run, callback.stop_reason or f"signal {signalled['signal']}")
        return 0
    if at_end is None or not _sharded(trainer):
        trainer.save_model(str(run.final))
    if node_main:
        save_converted(trainer.model, run.final, initial)  # PiSSA / OLoRA: a plain LoRA
        tokenizer.save_pretrained(str(run.final))
        write_final_marker(
            run,
            {
                "base_model": spec.model,
                "base_model_path": spec.model_path,
                "method": spec.training.method,
                "stage": spec.stage,
                "steps": trainer.state.global_step,
                "saved_at": time.time(),
            },
        )
        run.update_state(status="completed", finished_at=time.time(), exit_code=0)
        run.event("finished", step=trainer.state.global_step)
    return 0


def checkpoint_at_end(checkpoint: str | None) -> int | None:
    """The step of a checkpoint saved at the run's last step (its global_step reached
    max_steps), else None. Resuming from it, the HF Trainer would train one step more."""
    if checkpoint is None:
        return None
    import json

    try:
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
        step, max_steps = int(state["global_step"]), int(state["max_steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return step if max_steps > 0 and step >= max_steps else None


# What a Trainer checkpoint holds beside the model files `save_model` wrote into it (under
# FSDP's sharded state dict those are pytorch_model_fsdp_*/, as in final/ after training).
_TRAINING_STATE = ("optimizer*", "scheduler.pt", "scaler.pt", "rng_state*", "trainer_state.json",
                   "training_args.bin", "global_step*", "latest", "zero_to_fp32.py",
                   "checkpoint-is-incomplete.txt")  # fmt: skip


def _sharded(trainer: Any) -> bool:
    return bool(trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled)


def _take_checkpoint(
    trainer: Any, checkpoint: Path, run: RunDir, step: int, *, write: bool
) -> None:
    """Make `checkpoint` (saved at the last step) the trained model without training.

    Its weights are loaded into the model, which is then saved as usual (PiSSA/OLoRA conversion
    included). DeepSpeed and FSDP shard the model only inside `train()`, where saving needs their
    engine: there the model files the checkpoint holds (`save_model`'s output) are copied to
    final/ (an adapter is still loaded, for the conversion)."""
    import shutil

    from transformers import TrainerState

    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    if _sharded(trainer) and write:
        shutil.copytree(
            checkpoint,
            run.final,
            ignore=shutil.ignore_patterns(*_TRAINING_STATE),
            dirs_exist_ok=True,
        )
    if not _sharded(trainer) or (checkpoint / "adapter_config.json").is_file():
        trainer._load_from_checkpoint(str(checkpoint))  # an adapter loads unsharded either way
    if write:
        run.event("train_end", step=step, stopped=False, note=f"{checkpoint.name} is the last step")


def _sft_trainer(
    spec: RunSpec, run: RunDir, model: Any, tokenizer: Any, device: str, callback: Any
) -> Any:
    """The HF Trainer of SFT and pre-training on ftui's tokenised datasets."""
    from transformers import DataCollatorForSeq2Seq, Trainer

    from engine.data import build_datasets

    train_ds, eval_ds, _report = build_datasets(
        Path(spec.data),
        tokenizer,
        fmt=spec.data_format,
        seq_len=spec.training.seq_len,
        eval_fraction=spec.eval_fraction,
        seed=spec.hyper.seed,
        skip_invalid=spec.skip_invalid,
        mode=spec.mode,
    )
    if spec.training.packing:
        from transformers import DataCollatorWithFlattening

        collator: Any = DataCollatorWithFlattening()
    else:
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    args = training_arguments(spec, run, device, eval_ds is not None)
    _inject_faults(spec)
    from engine.run.adapters import optimizers

    return Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[callback],
        optimizers=optimizers(spec, model, args),  # LoRA+ (engine/run/adapters.py)
    )


def _record_stop(run: RunDir, reason: str) -> None:
    """A stopped run: its last complete checkpoint (as on disk) is where a resume starts."""
    last = run.last_checkpoint()
    changes: dict[str, Any] = {
        "status": "stopped",
        "failure": None,
        "stopped_at": time.time(),
        "stop_reason": reason,
        "last_checkpoint": str(last) if last else None,
        "last_checkpoint_step": int(last.name.split("-")[1]) if last else None,
    }
    if reason == "supervisor gone":
        changes["note"] = "its supervisor died: the trainer saved a checkpoint and stopped"
    run.update_state(**changes)
    run.event("stopped", step=changes["last_checkpoint_step"], reason=reason)


def _inject_faults(spec: RunSpec) -> None:
    """Fault injection for tests (no GPU needed): FTUI_FAULT_OOM_ABOVE_BATCH=N makes a run
    with a micro-batch above N fail as a CUDA out-of-memory error would."""
    limit = os.environ.get("FTUI_FAULT_OOM_ABOVE_BATCH")
    if limit and spec.training.batch > int(limit):
        import torch

        raise torch.OutOfMemoryError(
            f"CUDA out of memory (injected: micro-batch {spec.training.batch} > {limit})"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.run.train")
    parser.add_argument("--run-dir", required=True)
    args, _unknown = parser.parse_known_args(argv)  # launchers may add --local_rank=N
    run = RunDir(Path(args.run_dir))
    # `ftui stop --now`: the handler only sets a flag; the callback stops at the step's end.
    signal.signal(signal.SIGTERM, on_stop_signal)
    signal.signal(signal.SIGINT, on_stop_signal)
    rank = int(os.environ.get("RANK", 0))
    spec = RunSpec.from_yaml(run.spec.read_text(encoding="utf-8"))
    resume_from = os.environ.get("FTUI_RESUME_FROM") or None
    try:
        return train(spec, run, resume_from=resume_from)
    except Exception as exc:  # classify for state.json, keep the traceback in stdout.log
        traceback.print_exc()
        oom = type(exc).__name__ in ("OutOfMemoryError",) or "out of memory" in str(exc).lower()
        if rank == 0:
            run.update_state(
                failure="oom" if oom else "error", error=f"{type(exc).__name__}: {exc}"
            )
            run.event("oom" if oom else "error", message=str(exc)[:500])
        return EXIT_OOM if oom else EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
