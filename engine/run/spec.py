"""The run spec: everything a fine-tune needs, typed, validated, round-tripped through YAML.

`spec.yaml` in a run directory is this object frozen at launch. Validation errors name the
field (`training.rank`, `hyper.learning_rate`) and the fix. Defaults come from the planner.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from engine.errors import FtuiError
from engine.training_config import TrainingConfig

LAUNCHERS = ("auto", "python", "torchrun", "accelerate", "deepspeed")
DEVICES = ("auto", "cuda", "cpu")
MODES = ("sft", "pretrain")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts")


class SpecError(FtuiError):
    """A run spec field with an impossible value."""


@dataclass(frozen=True)
class Hyper:
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    warmup_steps: int = 0  # > 0 overrides warmup_ratio
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: int = 1
    eval_steps: int = 0  # 0: evaluate once per epoch when there is an eval split
    save_steps: int = 50
    save_total_limit: int = 3
    seed: int = 42
    report_to: str = "none"


@dataclass(frozen=True)
class Distributed:
    launcher: str = "auto"  # auto: python for one process, torchrun for several (deepspeed
    # when sharding is zero*: the HF Trainer reads the generated DeepSpeed JSON)
    nodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    hostfile: str | None = None  # DeepSpeed hostfile for multi-node runs


@dataclass(frozen=True)
class RunSpec:
    model: str  # what the user named (profile, dir, HF id)
    data: str  # dataset path (file or folder)
    model_path: str | None = None  # local directory with weights; None: HF cache by id
    name: str | None = None
    data_format: str = "auto"
    mode: str = "sft"
    eval_fraction: float = 0.0
    skip_invalid: bool = False
    device: str = "auto"
    probe: bool = True  # on a GPU: check the plan in the first steps (see engine/run/probe.py)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    hyper: Hyper = field(default_factory=Hyper)
    distributed: Distributed = field(default_factory=Distributed)
    plan: dict[str, Any] | None = None  # the estimate the run was launched with (summary)

    def validate(self) -> RunSpec:
        def bad(name: str, problem: str, fix: str) -> SpecError:
            return SpecError(f"spec field {name}: {problem}", fix)

        if not self.model:
            raise bad("model", "is empty", "name a model profile, a local directory or an HF id")
        if not self.data:
            raise bad("data", "is empty", "give the dataset file or folder")
        if self.mode not in MODES:
            raise bad("mode", f"{self.mode!r} is not one of {MODES}", "use sft or pretrain")
        if self.device not in DEVICES:
            raise bad("device", f"{self.device!r} is not one of {DEVICES}", "use auto, cuda or cpu")
        if not 0.0 <= self.eval_fraction < 0.5:
            raise bad("eval_fraction", f"{self.eval_fraction} is not in [0, 0.5)", "e.g. 0.05")
        try:
            self.training.validate()
        except FtuiError as error:
            raise SpecError(f"spec field training: {error.message}", error.fix) from error
        h = self.hyper
        if h.max_steps <= 0 and h.epochs <= 0:
            raise bad("hyper.epochs", "must be positive when max_steps is not set", "e.g. 3")
        if not 0 < h.learning_rate < 1:
            raise bad("hyper.learning_rate", f"{h.learning_rate} is out of range", "e.g. 2e-4")
        if h.lr_scheduler not in SCHEDULERS:
            raise bad(
                "hyper.lr_scheduler", f"{h.lr_scheduler!r} is unknown", f"one of {SCHEDULERS}"
            )
        if not 0 <= h.warmup_ratio < 1:
            raise bad("hyper.warmup_ratio", f"{h.warmup_ratio} is not in [0, 1)", "e.g. 0.03")
        if h.weight_decay < 0 or h.max_grad_norm < 0:
            raise bad("hyper.weight_decay", "must not be negative", "e.g. 0.0")
        for name in ("logging_steps", "save_steps", "save_total_limit"):
            if getattr(h, name) < 1:
                raise bad(f"hyper.{name}", "must be at least 1", f"set hyper.{name}: 1 or more")
        d = self.distributed
        if d.launcher not in LAUNCHERS:
            raise bad("distributed.launcher", f"{d.launcher!r} is unknown", f"one of {LAUNCHERS}")
        if d.nodes < 1 or not 0 <= d.node_rank < d.nodes:
            raise bad(
                "distributed.node_rank",
                f"{d.node_rank} is not a node of {d.nodes}",
                "node_rank counts from 0 to nodes-1",
            )
        if not 0 <= d.master_port < 65536:
            raise bad("distributed.master_port", f"{d.master_port} is not a port", "e.g. 29500")
        if d.launcher == "python" and (self.training.num_gpus > 1 or d.nodes > 1):
            raise bad(
                "distributed.launcher",
                "python starts one process only",
                "use torchrun, accelerate or deepspeed for several GPUs or nodes",
            )
        return self

    def with_changes(self, **changes: Any) -> RunSpec:
        return replace(self, **changes)

    # -- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["training"]["targets"] = list(self.training.targets)
        return data

    def to_yaml(self) -> str:
        import yaml

        return str(yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False))

    @classmethod
    def from_dict(cls, data: Any) -> RunSpec:
        if not isinstance(data, dict):
            raise SpecError("the spec is not a mapping of fields", "see `ftui launch --help`")
        top = {f.name for f in fields(cls)}
        _reject_unknown(data, top, "")
        kwargs = {k: v for k, v in data.items() if k not in ("training", "hyper", "distributed")}
        training = data.get("training") or {}
        _reject_unknown(training, set(TrainingConfig.field_names()), "training.")
        if "targets" in training:
            targets = training["targets"]
            training = {
                **training,
                "targets": tuple(targets.split(","))
                if isinstance(targets, str)
                else tuple(targets),
            }
        hyper = data.get("hyper") or {}
        _reject_unknown(hyper, {f.name for f in fields(Hyper)}, "hyper.")
        dist = data.get("distributed") or {}
        _reject_unknown(dist, {f.name for f in fields(Distributed)}, "distributed.")
        try:
            spec = cls(
                **kwargs,
                training=TrainingConfig(**training),
                hyper=Hyper(**hyper),
                distributed=Distributed(**dist),
            )
        except TypeError as exc:
            raise SpecError(f"spec: {exc}", "compare with a spec written by `ftui launch`") from exc
        _check_types(spec)
        return spec.validate()

    @classmethod
    def from_yaml(cls, text: str) -> RunSpec:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(f"the spec is not valid YAML: {exc}", "fix the YAML syntax") from exc
        return cls.from_dict(data)


def _reject_unknown(data: Any, known: set[str], prefix: str) -> None:
    if not isinstance(data, dict):
        raise SpecError(f"spec field {prefix.rstrip('.')}: must be a mapping", "see a written spec")
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpecError(
            f"unknown spec field(s): {', '.join(prefix + u for u in unknown)}",
            f"known fields{' under ' + prefix.rstrip('.') if prefix else ''}: "
            + ", ".join(sorted(known)),
        )


def _check_types(spec: RunSpec) -> None:
    """YAML gives strings where numbers were meant ('2e-4' stays a string): name the field."""
    for section_name in ("training", "hyper", "distributed"):
        section = getattr(spec, section_name)
        for f in fields(section):
            value = getattr(section, f.name)
            default = getattr(type(section)(), f.name)
            if default is None or value is None:
                continue
            expected = type(default)
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                continue
            if expected is tuple:
                continue
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise SpecError(
                    f"spec field {section_name}.{f.name}: {value!r} is not a {expected.__name__}",
                    f"write {section_name}.{f.name} as a {expected.__name__}",
                )
