"""Everything a launch can check before anything starts: the spec, the model, the data, the GPUs.

`preflight(spec)` runs before a run folder is created, for `ftui launch` from flags and from a
spec file alike (and for the wizard): a problem is one FtuiError naming it and the fix, and
nothing has been written or started. It returns the spec with the model's local directory
filled in (never a value the user set changed) and the dataset report.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from engine.errors import FtuiError
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
    from engine.hub.download import missing_weights_error

    raise missing_weights_error(arch.hf_id or arch.name)


def check_data(spec: RunSpec) -> dict[str, Any]:
    """The dataset as the trainer will read it: readable, the right kind for the mode, and
    with records to train on."""
    from engine.data import check_dataset

    report = check_dataset(Path(spec.data), fmt=spec.data_format)
    where = spec.data
    if report.format == "preference":
        raise FtuiError(
            f"{where} holds preference pairs (chosen/rejected): supervised fine-tuning on them "
            "is not supported yet",
            "train on the chosen answers (convert each pair to a conversation that ends with "
            "its chosen response)",
        )
    if spec.mode == "pretrain" and report.format != "text":
        raise FtuiError(
            f"pre-training needs plain text records, but {where} is {report.format}",
            'use a dataset of {"text": ...} records, or train in SFT mode',
        )
    if spec.mode == "sft" and report.format == "text":
        raise FtuiError(
            f"{where} holds plain text ({{'text': ...}}): that is for continued pre-training",
            "set mode: pretrain in the spec, or use a chat/instruction dataset",
        )
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


def preflight(spec: RunSpec) -> Preflight:
    """Check `spec` as far as anything can be checked without starting it."""
    spec = spec.validate()
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
    data = check_data(spec)
    check_machine(spec)
    return Preflight(spec.validate(), data)
