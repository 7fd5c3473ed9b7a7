"""Everything a launch can check before anything starts: the spec, the model, the data, the GPUs.

`preflight(spec)` runs before a run folder is created, for `ftui launch` from flags and from a
spec file alike (and for the wizard): a problem is one FtuiError naming it and the fix, and
nothing has been written or started. It returns the spec with the model's local directory
filled in (never a value the user set changed) and the dataset report.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from engine.errors import FtuiError
from engine.models import ModelArch
from engine.run.spec import RunSpec, field_label


@dataclass(frozen=True)
class Preflight:
    spec: RunSpec  # validated; model_path filled in when the spec left it out
    data: dict[str, Any]  # the dataset report (`ftui data check --json`'s shape)


def has_weights(folder: str | Path) -> bool:
    """Whole weights: every shard the index names (an interrupted download has only some)."""
    from engine.hub.download import weights_complete

    return weights_complete(Path(folder))


def local_model(model: str, model_path: str | None = None) -> tuple[str, str]:
    """(name for the spec, local directory with the config and weights) of a model a run can
    load offline: a directory, or a profile / HF id whose snapshot is in the local cache."""
    from engine.models import resolve_model

    if model_path is not None:
        if not Path(model_path).expanduser().is_dir():
            raise FtuiError(
                f"spec field model_path: {model_path} is not a directory",
                "point model_path at the folder with the model's config.json and weights, "
                "or leave it out",
            )
        arch = resolve_model(model_path)
    else:
        arch = resolve_model(model)
    if arch.source == "dir" and arch.path and not has_weights(arch.path):
        raise FtuiError(
            f"{arch.path} has a config.json but no complete weights (*.safetensors: every "
            "shard its index names)",
            f"point {field_label('model')} at a directory with the model's weights",
        )
    if arch.source in ("dir", "hf-cache", "hub") and arch.path and has_weights(arch.path):
        return (model if model_path else arch.hf_id or model), arch.path
    from engine.hub.download import cached_snapshot, missing_weights_error

    snapshot = cached_snapshot(arch.hf_id) if arch.source == "profile" and arch.hf_id else None
    if arch.hf_id and snapshot is not None and has_weights(snapshot):
        return arch.hf_id, str(snapshot)  # a profile whose model was downloaded

    raise missing_weights_error(arch.hf_id or arch.name)


def check_format(fmt: str, stage: str, where: str) -> None:
    """The stage reads this dataset format (the plan wizard asks too), or one FtuiError."""
    from engine.data.preference import refuse_format
    from engine.training_config import PREFERENCE_STAGES

    if stage in PREFERENCE_STAGES:
        refuse_format(fmt, stage, where)
    elif fmt in ("preference", "kto"):
        kind = "preference pairs (chosen/rejected)" if fmt == "preference" else (
            "judged answers (completion/label)"
        )  # fmt: skip
        raise FtuiError(
            f"{where} holds {kind}: that is for preference training, not {stage}",
            "launch with --stage dpo (or orpo, simpo, kto), or use a chat/instruction dataset",
        )
    if stage == "pretrain" and fmt != "text":
        raise FtuiError(
            f"pre-training needs plain text records, but {where} is {fmt}",
            'use a dataset of {"text": ...} records, or --stage sft',
        )
    if stage == "sft" and fmt == "text":
        raise FtuiError(
            f"{where} holds plain text ({{'text': ...}}): that is for continued pre-training",
            "launch with --stage pretrain, or use a chat/instruction dataset",
        )


def check_data(spec: RunSpec) -> dict[str, Any]:
    """The dataset as the trainer will read it: readable, the right kind for the stage, and
    with records to train on."""
    from engine.data import check_dataset

    report = check_dataset(Path(spec.data), fmt=spec.data_format)
    where = spec.data
    check_format(report.format, spec.stage, where)
    invalid = report.invalid
    first = "; ".join(f"{r.location}: {r.reason}" for r in invalid[:3])
    if report.valid == 0:
        raise FtuiError(
            f"{where}: no valid record to train on ({len(invalid)} invalid: {first})",
            f"fix the records (`ftui data check {where}` lists them)",
        )
    if invalid and not spec.skip_invalid:
        raise FtuiError(
            f"{where}: {len(invalid)} invalid record(s) ({first})",
            f"fix them (`ftui data check {where}`), or launch with --skip-invalid "
            f"to train on the {report.valid} valid one(s)",
        )
    return dict(report.to_dict())


def check_machine(spec: RunSpec) -> None:
    """A run that must have GPUs finds them here (multi-node: this node's share)."""
    if spec.device != "cuda":
        return
    from engine.machine.hardware import detect_machine

    machine = detect_machine()
    if not machine.has_gpu:
        raise FtuiError(
            f"{field_label('device')} cuda, but this machine has no usable GPU "
            f"({machine.no_gpu_reason})",
            "launch with --device cpu (slow: tiny models only), or on a machine with GPUs",
        )
    count = len(machine.gpus)
    if spec.training.num_gpus > count:
        raise FtuiError(
            f"the run uses {spec.training.num_gpus} GPUs per node, this machine has {count}",
            f"use --num-gpus {count} or less",
        )


def scratch_model(model: str, model_path: str | None) -> str:
    """`init: scratch` needs the model's config and tokenizer on disk, not its weights."""
    from engine.models import resolve_model

    arch = resolve_model(model_path or model)
    folder = Path(arch.path) if arch.path else None
    if folder is None or not (folder / "config.json").is_file():
        raise FtuiError(
            f"{model}: --init scratch needs the model's config.json and tokenizer on disk",
            f"point {field_label('model')} at a folder with them (`hf download "
            f"{arch.hf_id or model} config.json tokenizer.json tokenizer_config.json` fetches "
            "just those)",
        )
    return str(folder)


def check_from_run(spec: RunSpec) -> RunSpec:
    """`from_run` names a completed ftui run of the same base model; stored as its folder."""
    if not spec.from_run:
        return spec
    from engine.run.rundir import find_run, read_json

    run = find_run(spec.from_run)
    final = run.path / "final"
    if not final.is_dir():
        raise FtuiError(
            f"{field_label('from_run')}: {run.run_id} has no final model (it did not complete)",
            f"resume it first (`ftui resume {run.run_id}`), or start from another run",
        )
    adapter = (final / "adapter_config.json").is_file()
    if adapter != spec.training.saves_adapter:
        kind = "an adapter (LoRA/QLoRA)" if adapter else "a full model"
        raise FtuiError(
            f"{field_label('from_run')}: {run.run_id} trained {kind}, this run is "
            f"--method {spec.training.method}",
            "use --method lora or qlora to continue an adapter, --method full for a full model",
        )
    marker = read_json(final / "ftui.json")
    base = marker.get("base_model_path")
    if (
        adapter
        and base
        and spec.model_path
        and Path(base).resolve() != Path(spec.model_path).resolve()
    ):
        raise FtuiError(
            f"{field_label('from_run')}: {run.run_id}'s adapter was trained on {base}, "
            f"not on {spec.model_path}",
            f"launch with --model {marker.get('base_model') or base}",
        )
    return spec.with_changes(from_run=str(run.path))


# What each tracker needs before a run starts: its package, and a login unless it runs offline.
TRACKER_PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboardX"),
    "wandb": ("wandb",),
    "swanlab": ("swanlab",),
    "mlflow": ("mlflow",),
}


def check_tracker(report_to: str) -> None:
    """--report-to: the package is installed and, for the hosted ones, logged in or offline."""
    import importlib.util
    import os

    if report_to == "none":
        return
    packages = TRACKER_PACKAGES[report_to]
    if not any(importlib.util.find_spec(name) for name in packages):
        raise FtuiError(
            f"--report-to {report_to}: the {packages[0]} package is not installed",
            f"pip install {packages[0]} (in ftui's environment), or --report-to none",
        )
    home = Path.home()
    if report_to == "wandb":
        offline = os.environ.get("WANDB_MODE", "") in ("offline", "disabled", "dryrun")
        netrc = home / ".netrc"
        logged_in = bool(os.environ.get("WANDB_API_KEY")) or (
            netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="replace")
        )
        if not (offline or logged_in):
            raise FtuiError(
                "--report-to wandb: not logged in to Weights & Biases",
                "run `wandb login`, set WANDB_API_KEY, or WANDB_MODE=offline to log locally",
            )
    if report_to == "swanlab":
        offline = os.environ.get("SWANLAB_MODE", "") in ("local", "offline", "disabled")
        logged_in = bool(os.environ.get("SWANLAB_API_KEY")) or (home / ".swanlab").is_dir()
        if not (offline or logged_in):
            raise FtuiError(
                "--report-to swanlab: not logged in to SwanLab",
                "run `swanlab login`, set SWANLAB_API_KEY, or SWANLAB_MODE=local to log locally",
            )


def check_method(spec: RunSpec) -> None:
    """The PEFT family's needs: bias terms for BitFit, a supported model for llama-adapter,
    bitsandbytes for an 8-bit base (engine/plan/methods.py)."""
    from engine.plan.methods import check_architecture
    from engine.run.rundir import read_json

    config = read_json(Path(spec.model_path or "") / "config.json")
    if config:
        check_architecture(spec.training.method, config)
        from engine.models import resolve_model
        from engine.plan.methods import check_dora_on_experts, check_fused_targets

        arch = resolve_model(str(spec.model_path))
        if spec.training.dora:
            check_dora_on_experts(arch, True, spec.training.targets)
        if spec.training.is_peft:
            check_fused_targets(arch, spec.training.targets)
        if spec.training.grad_ckpt:
            check_checkpointing(arch)
    if spec.training.base_bits == 8 and importlib.util.find_spec("bitsandbytes") is None:
        raise FtuiError(
            "--base-bits 8 loads the base through bitsandbytes' LLM.int8, not installed",
            "pip install bitsandbytes, or drop --base-bits 8",
        )


def check_checkpointing(arch: ModelArch) -> None:
    """A model class without gradient checkpointing (CTRL, CPM-Ant, GPT-NeoX-Japanese) fails
    at the Trainer's set-up when asked for it: refused before anything starts."""
    from engine.plan.params import param_roles

    roles = param_roles(arch)  # cached per config by `ftui plan`
    if roles is not None and not roles.checkpointing:
        raise FtuiError(
            f"{roles.model_class or 'this model'} does not support gradient checkpointing",
            "pass --no-grad-ckpt (ftui plan never recommends checkpointing for it)",
        )


def preflight(spec: RunSpec) -> Preflight:
    """Check `spec` as far as anything can be checked without starting it."""
    spec = spec.validate()
    if spec.init == "scratch":
        path = scratch_model(spec.model, spec.model_path)
    else:
        _name, path = local_model(spec.model, spec.model_path)
    # The run starts in its own folder: relative paths are made absolute (same files).
    spec = spec.with_changes(
        model_path=str(Path(spec.model_path or path).expanduser().absolute()),
        data=str(Path(spec.data).expanduser().absolute()),
    )
    if spec.distributed.hostfile:
        hostfile = str(Path(spec.distributed.hostfile).expanduser().absolute())
        spec = spec.with_changes(distributed=replace(spec.distributed, hostfile=hostfile))
    if spec.distributed.hostfile and not Path(spec.distributed.hostfile).is_file():
        raise FtuiError(
            f"{field_label('distributed.hostfile')}: {spec.distributed.hostfile} is not a file",
            "give the path of a DeepSpeed hostfile (one `host slots=N` line per node)",
        )
    spec = check_from_run(spec)
    check_method(spec)
    check_tracker(spec.hyper.report_to)
    data = check_data(spec)
    check_machine(spec)
    return Preflight(spec.validate(), data)
