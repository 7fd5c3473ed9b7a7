"""The run spec: everything a fine-tune needs, typed, validated, round-tripped through YAML.

`spec.yaml` in a run directory is this object frozen at launch. Validation errors name the
field (`training.rank`, `hyper.learning_rate`) and the fix. Defaults come from the planner.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from engine.errors import FtuiError
from engine.training_config import PREFERENCE_STAGES, STAGES, TrainingConfig

LAUNCHERS = ("auto", "python", "torchrun", "accelerate", "deepspeed")
DEVICES = ("auto", "cuda", "cpu")
INITS = ("pretrained", "scratch")  # scratch: the model's config with random weights (pretrain)
REPORT_TO = ("none", "tensorboard", "wandb", "swanlab", "mlflow")
# Loss types per preference stage (TRL's names); "auto" is the first of each.
LOSS_TYPES = {
    "dpo": ("sigmoid", "ipo", "hinge", "robust", "bco_pair", "sppo_hard", "nca_pair", "apo_zero"),
    "orpo": ("orpo",),
    "kto": ("kto", "apo_zero_unpaired"),
    "simpo": ("simpo", "cpo_simpo"),
}
# beta's usual value per stage (SimPO's paper uses 2.0-2.5; the others 0.1).
DEFAULT_BETA = {"dpo": 0.1, "orpo": 0.1, "kto": 0.1, "simpo": 2.0}
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts")


# The `ftui launch` flag that sets a spec field: errors name both, for spec files and flags.
FLAGS = {
    "model": "--model",
    "data": "--data",
    "name": "--name",
    "data_format": "--format",
    "training.stage": "--stage",
    "init": "--init",
    "from_run": "--from-run",
    "preference.beta": "--beta",
    "preference.loss_type": "--loss-type",
    "preference.max_prompt_len": "--max-prompt-len",
    "hyper.report_to": "--report-to",
    "eval_fraction": "--eval-fraction",
    "device": "--device",
    "hyper.epochs": "--epochs",
    "hyper.max_steps": "--max-steps",
    "hyper.learning_rate": "--lr",
    "hyper.save_steps": "--save-steps",
    "hyper.seed": "--seed",
    "distributed.launcher": "--launcher",
    "distributed.nodes": "--nodes",
    "distributed.node_rank": "--node-rank",
    "distributed.master_addr": "--master-addr",
    "distributed.master_port": "--master-port",
    "distributed.hostfile": "--hostfile",
    "budget.price": "--price",
    "budget.max_cost": "--max-cost",
    "budget.max_hours": "--max-hours",
    "budget.notify": "--notify",
}
# Seeds go to numpy too, which takes 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1
# Top-level fields and the types YAML must give them (None allowed where the default is None).
_TOP_TYPES: dict[str, type | tuple[type, ...]] = {
    "model": str,
    "data": str,
    "model_path": str,
    "name": str,
    "data_format": str,
    "init": str,
    "from_run": str,
    "eval_fraction": (int, float),
    "skip_invalid": bool,
    "device": str,
    "probe": bool,
    "plan": dict,
}

_KINDS: dict[type | tuple[type, ...], str] = {str: "text", bool: "true or false", dict: "a mapping"}


class SpecError(FtuiError):
    """A run spec field with an impossible value."""


def field_label(name: str) -> str:
    """`hyper.seed (--seed)`: the spec field and the flag that sets it."""
    flag = FLAGS.get(name)
    return f"{name} ({flag})" if flag else name


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
class Preference:
    """DPO, ORPO, KTO and SimPO's knobs (ignored by pretrain and sft)."""

    beta: float | None = None  # None: DEFAULT_BETA of the stage
    loss_type: str = "auto"  # auto: the stage's own loss (LOSS_TYPES)
    max_prompt_len: int = 0  # prompt tokens kept (its end); 0: half the sequence length

    def beta_for(self, stage: str) -> float:
        return self.beta if self.beta is not None else DEFAULT_BETA.get(stage, 0.1)

    def loss_for(self, stage: str) -> str:
        return LOSS_TYPES[stage][0] if self.loss_type == "auto" else self.loss_type

    def prompt_len_for(self, seq_len: int) -> int:
        return self.max_prompt_len or max(1, seq_len // 2)


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
class Budget:
    """What the run may cost and whom to tell when it ends (see engine/run/cost.py)."""

    price: float | None = None  # USD per GPU-hour (CPU runs: per hour of the machine)
    price_source: str | None = None  # --price, the config file, or the GPU profile
    max_cost: float | None = None  # USD: stop (checkpoint, `stopped`, reason budget) there
    max_hours: float | None = None  # wall-clock hours, every attempt together
    notify: str | None = None  # webhook URL POSTed when the run ends, fails or stalls

    def validate(self, bad: Any) -> None:
        for name in ("price", "max_cost", "max_hours"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad(f"budget.{name}", f"{value!r} is not a number", "e.g. 2.5")
            if not math.isfinite(value) or value < 0 or (value == 0 and name != "price"):
                raise bad(
                    f"budget.{name}",
                    f"{value} is not a positive amount",
                    "USD per GPU-hour for --price, USD for --max-cost, hours for --max-hours",
                )
        if self.notify is not None:
            from urllib.parse import urlsplit

            parts = urlsplit(str(self.notify))
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise bad(
                    "budget.notify",
                    "is not an http(s) URL",
                    "e.g. https://ntfy.sh/my-topic or a Slack incoming-webhook URL",
                )


@dataclass(frozen=True)
class RunSpec:
    model: str  # what the user named (profile, dir, HF id)
    data: str  # dataset path (file or folder)
    model_path: str | None = None  # local directory with weights; None: HF cache by id
    name: str | None = None
    data_format: str = "auto"
    init: str = "pretrained"  # scratch: random weights from the model's config (pretrain only)
    from_run: str | None = None  # start from this ftui run's final adapter or model
    eval_fraction: float = 0.0
    skip_invalid: bool = False
    device: str = "auto"
    probe: bool = True  # on a GPU: check the plan in the first steps (see engine/run/probe.py)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    hyper: Hyper = field(default_factory=Hyper)
    preference: Preference = field(default_factory=Preference)
    distributed: Distributed = field(default_factory=Distributed)
    budget: Budget = field(default_factory=Budget)
    plan: dict[str, Any] | None = None  # the estimate the run was launched with (summary)

    @property
    def stage(self) -> str:
        return self.training.stage

    @property
    def mode(self) -> str:
        """How the data is read for the loss: "pretrain" (text) or "sft" (the answers)."""
        return "pretrain" if self.stage == "pretrain" else "sft"

    @property
    def is_preference(self) -> bool:
        return self.stage in PREFERENCE_STAGES

    def validate(self) -> RunSpec:
        def bad(name: str, problem: str, fix: str) -> SpecError:
            return SpecError(f"spec field {field_label(name)}: {problem}", fix)

        if not self.model:
            raise bad("model", "is empty", "name a model profile, a local directory or an HF id")
        if not self.data:
            raise bad("data", "is empty", "give the dataset file or folder")
        if self.init not in INITS:
            raise bad("init", f"{self.init!r} is not one of {INITS}", "use pretrained or scratch")
        if self.init == "scratch" and self.stage != "pretrain":
            raise bad(
                "init",
                f"scratch (random weights) is for pre-training, not {self.stage}",
                "add --stage pretrain, or drop --init scratch",
            )
        if self.init == "scratch" and self.from_run:
            raise bad("from_run", "and init scratch exclude each other", "drop one of them")
        if self.init == "scratch" and self.training.method != "full":
            raise bad(
                "init",
                f"scratch trains every weight: {self.training.method} on random weights learns "
                "nothing useful",
                "use --method full with --init scratch",
            )
        self._validate_preference(bad)
        self.budget.validate(bad)
        if self.device not in DEVICES:
            raise bad("device", f"{self.device!r} is not one of {DEVICES}", "use auto, cuda or cpu")
        if not 0.0 <= self.eval_fraction < 0.5:
            raise bad(
                "eval_fraction",
                f"{self.eval_fraction} is not in [0, 0.5): that share is held out from training",
                "e.g. 0.05, or 0 for no evaluation",
            )
        try:
            self.training.validate()
        except FtuiError as error:
            raise SpecError(f"spec field training: {error.message}", error.fix) from error
        h = self.hyper
        for name in ("epochs", "learning_rate", "warmup_ratio", "weight_decay", "max_grad_norm"):
            if not math.isfinite(getattr(h, name)):
                raise bad(f"hyper.{name}", f"{getattr(h, name)} is not a number", "a finite value")
        if h.max_steps != -1 and h.max_steps < 1:
            raise bad(
                "hyper.max_steps",
                f"{h.max_steps} steps: a run trains at least 1 step",
                "pass 1 or more, or leave it out (-1 in a spec) to train by epochs",
            )
        if h.max_steps == -1 and h.epochs <= 0:
            raise bad("hyper.epochs", "must be positive when max_steps is not set", "e.g. 3")
        if not 0 < h.learning_rate < 1:
            raise bad(
                "hyper.learning_rate",
                f"{h.learning_rate} is out of range (0, 1): nothing would be learned or all lost",
                "e.g. 2e-4 for adapters, 2e-5 for a full fine-tune",
            )
        if not 0 <= h.seed <= MAX_SEED:
            raise bad("hyper.seed", f"{h.seed} is not in 0 .. {MAX_SEED}", "e.g. 42")
        if h.report_to not in REPORT_TO:
            raise bad(
                "hyper.report_to", f"{h.report_to!r} is not one of {REPORT_TO}", "e.g. tensorboard"
            )
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
                raise bad(
                    f"hyper.{name}",
                    f"must be at least 1 (got {getattr(h, name)})",
                    f"set {field_label('hyper.' + name)} to 1 or more",
                )
        for name in ("warmup_steps", "eval_steps"):
            if getattr(h, name) < 0:
                raise bad(f"hyper.{name}", f"{getattr(h, name)} is negative", "use 0 or more")
        d = self.distributed
        if d.launcher not in LAUNCHERS:
            raise bad("distributed.launcher", f"{d.launcher!r} is unknown", f"one of {LAUNCHERS}")
        if d.nodes < 1:
            raise bad("distributed.nodes", f"{d.nodes} nodes", "1 or more")
        if not 0 <= d.node_rank < d.nodes:
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

    def _validate_preference(self, bad: Any) -> None:
        p, stage = self.preference, self.stage
        if p.beta is not None and not (math.isfinite(p.beta) and p.beta > 0):
            raise bad("preference.beta", f"{p.beta} is not a positive number", "e.g. 0.1")
        if p.max_prompt_len < 0:
            raise bad("preference.max_prompt_len", f"{p.max_prompt_len} is negative", "e.g. 512")
        if p.max_prompt_len and p.max_prompt_len >= self.training.seq_len:
            raise bad(
                "preference.max_prompt_len",
                f"{p.max_prompt_len} leaves no room for the answer in --seq-len "
                f"{self.training.seq_len}",
                f"use at most {self.training.seq_len - 1} (e.g. half the sequence length)",
            )
        if stage in PREFERENCE_STAGES and p.loss_type != "auto":
            allowed = LOSS_TYPES[stage]
            if p.loss_type not in allowed:
                raise bad(
                    "preference.loss_type",
                    f"{p.loss_type!r} is not a loss of {stage}",
                    f"use one of: {', '.join(allowed)}",
                )

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
        top = {f.name for f in fields(cls)} | {"mode"}  # mode: run folders written before stage
        _reject_unknown(data, top, "")
        for required in ("model", "data"):
            if data.get(required) in (None, ""):
                raise SpecError(
                    f"spec field {required} is missing",
                    f"add `{required}: ...` to the spec ("
                    + ("a model profile, a local directory or an HF id)" if required == "model"
                       else "the dataset file or folder)"),
                )  # fmt: skip
        for name, expected in _TOP_TYPES.items():
            value = data.get(name)
            if value is None:
                continue
            if not isinstance(value, expected) or (
                expected is not bool and isinstance(value, bool)
            ):
                kind = _KINDS.get(expected, "a number")
                raise SpecError(
                    f"spec field {field_label(name)}: {value!r} is not {kind}",
                    f"write {name} as {kind}",
                )
        sections = ("training", "hyper", "preference", "distributed", "budget")
        kwargs = {k: v for k, v in data.items() if k not in sections}
        training = data.get("training") or {}
        training = _legacy_mode(kwargs.pop("mode", None), training)
        _reject_unknown(training, set(TrainingConfig.field_names()), "training.")
        if "targets" in training:
            targets = training["targets"]
            if not isinstance(targets, (str, list)) or not all(isinstance(t, str) for t in targets):
                raise SpecError(
                    f"spec field training.targets: {targets!r} is not a list of module names",
                    "e.g. targets: all-linear, or [q_proj, v_proj]",
                )
            training = {
                **training,
                "targets": tuple(targets.split(","))
                if isinstance(targets, str)
                else tuple(targets),
            }
        hyper = data.get("hyper") or {}
        _reject_unknown(hyper, {f.name for f in fields(Hyper)}, "hyper.")
        preference = data.get("preference") or {}
        _reject_unknown(preference, {f.name for f in fields(Preference)}, "preference.")
        dist = data.get("distributed") or {}
        _reject_unknown(dist, {f.name for f in fields(Distributed)}, "distributed.")
        budget = data.get("budget") or {}
        _reject_unknown(budget, {f.name for f in fields(Budget)}, "budget.")
        try:
            spec = cls(
                **kwargs,
                training=TrainingConfig(**training),
                hyper=Hyper(**hyper),
                preference=Preference(**preference),
                distributed=Distributed(**dist),
                budget=Budget(**budget),
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


def _legacy_mode(mode: Any, training: Any) -> Any:
    """Specs written before `training.stage` had a top-level `mode: sft|pretrain`."""
    if mode is None or not isinstance(training, dict):
        return training
    if mode not in ("sft", "pretrain"):
        raise SpecError(
            f"spec field mode: {mode!r} is not sft or pretrain",
            f"write the stage as training.stage, one of {', '.join(STAGES)}",
        )
    stage = training.get("stage", mode)
    if stage != mode:
        raise SpecError(
            f"spec fields mode ({mode}) and training.stage ({stage}) disagree",
            "drop mode: training.stage replaces it",
        )
    return {**training, "stage": stage}


def _reject_unknown(data: Any, known: set[str], prefix: str) -> None:
    if not isinstance(data, dict):
        raise SpecError(f"spec field {prefix.rstrip('.')}: must be a mapping", "see a written spec")
    unknown = sorted(str(u) for u in set(data) - known)
    if unknown:
        guesses = [
            f"{prefix}{match[0]} for {prefix}{name}"
            for name in unknown
            if (match := difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6))
        ]
        where = f" under {prefix.rstrip('.')}" if prefix else ""
        raise SpecError(
            f"unknown spec field(s): {', '.join(prefix + u for u in unknown)}",
            (f"did you mean {', '.join(guesses)}? " if guesses else "")
            + f"known fields{where}: {', '.join(sorted(known))}",
        )


def _check_types(spec: RunSpec) -> None:
    """YAML gives strings where numbers were meant ('2e-4' stays a string): name the field."""
    for section_name in ("training", "hyper", "preference", "distributed"):
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
