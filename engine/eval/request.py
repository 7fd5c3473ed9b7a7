"""What one evaluation does, checked before anything loads: the checkpoints, the data, the
prompts, the harness tasks, and the folder its files go to (`RUN/eval/<eval-id>/`)."""

from __future__ import annotations

import importlib.util
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.chat import BASE, ChatError, read_spec, resolve_checkpoint, run_checkpoints
from engine.errors import FtuiError
from engine.run.rundir import RunDir, read_json, write_json_atomic
from engine.run.spec import RunSpec

DEFAULT_SAMPLES = 8  # held-out samples answered when no prompts file is given
DEFAULT_MAX_NEW_TOKENS = 128


class EvalError(FtuiError):
    """An evaluation that cannot start or failed; the message names the fix."""


@dataclass(frozen=True)
class EvalRequest:
    run_path: str
    checkpoints: tuple[str, ...]  # resolved names (final, checkpoint-N), training order
    data: str | None = None  # a dataset file instead of the run's eval split
    prompts: str | None = None  # a prompts file instead of held-out samples
    samples: int = DEFAULT_SAMPLES
    tasks: tuple[str, ...] = ()  # lm-evaluation-harness task names
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    seed: int = 0
    device: str = "auto"
    eval_id: str = ""
    created_at: float = field(default_factory=time.time)

    @property
    def run(self) -> RunDir:
        return RunDir(Path(self.run_path))

    @property
    def variants(self) -> list[str]:
        """What is measured: the base first, then the chosen checkpoints."""
        return [BASE, *self.checkpoints]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["checkpoints"], data["tasks"] = list(self.checkpoints), list(self.tasks)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalRequest:
        return cls(
            **{
                **data,
                "checkpoints": tuple(data["checkpoints"]),
                "tasks": tuple(data.get("tasks") or ()),
            }
        )


# -- the folder ------------------------------------------------------------------------------------


def evals_root(run: RunDir) -> Path:
    return run.path / "eval"


def summary_path(run: RunDir) -> Path:
    """The latest finished evaluation of a run (what `ftui runs`/`ftui status` show)."""
    return evals_root(run) / "summary.json"


@dataclass(frozen=True)
class EvalDir:
    """One evaluation's files under the run's eval/ folder."""

    path: Path

    @property
    def eval_id(self) -> str:
        return self.path.name

    @property
    def request(self) -> Path:
        return self.path / "request.json"

    @property
    def status(self) -> Path:
        return self.path / "status.json"  # progress, kept current while it runs

    @property
    def results(self) -> Path:
        return self.path / "results.json"

    @property
    def generations(self) -> Path:
        return self.path / "generations.jsonl"

    @property
    def log(self) -> Path:
        return self.path / "eval.log"  # a detached evaluation's output

    def read_request(self) -> EvalRequest:
        return EvalRequest.from_dict(json.loads(self.request.read_text(encoding="utf-8")))

    def read_status(self) -> dict[str, Any]:
        return read_json(self.status)


def create_eval_dir(request: EvalRequest) -> tuple[EvalDir, EvalRequest]:
    root = evals_root(request.run)
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(10):
        eval_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        try:
            (root / eval_id).mkdir()
        except FileExistsError:
            continue
        folder = EvalDir(root / eval_id)
        request = EvalRequest.from_dict({**request.to_dict(), "eval_id": eval_id})
        write_json_atomic(folder.request, request.to_dict())
        return folder, request
    raise EvalError(f"could not create an evaluation folder under {root}", "check its permissions")


def latest_eval(run: RunDir) -> EvalDir | None:
    root = evals_root(run)
    if not root.is_dir():
        return None
    found = sorted(p for p in root.iterdir() if p.is_dir() and (p / "request.json").is_file())
    return EvalDir(found[-1]) if found else None


# -- checks ----------------------------------------------------------------------------------------


def _step(name: str) -> int:
    match = re.fullmatch(r"checkpoint-(\d+)", name)
    return int(match.group(1)) if match else 1 << 62  # final after every checkpoint


def choose_checkpoints(run: RunDir, choice: str) -> tuple[str, ...]:
    """`all`, `final`, or a comma list of `final`, `checkpoint-N`, `N`: resolved names in training
    order. An unknown name is one message listing what the run has."""
    if not run_checkpoints(run):
        resolve_checkpoint(run, None)  # raises the chat's "no adapter yet" message
    wanted = [part.strip() for part in choice.split(",") if part.strip()]
    if not wanted:
        raise EvalError("--checkpoints is empty", "use all, final, or a list such as 80,final")
    if wanted == ["all"]:
        names = run_checkpoints(run)
    elif wanted == ["final"]:
        names = [resolve_checkpoint(run, None).name]  # the newest checkpoint while no final yet
    else:
        names = []
        for ref in wanted:
            if ref in ("all", BASE):
                raise EvalError(
                    f"--checkpoints {choice}: {ref!r} cannot be part of a list",
                    "the base is always measured; use all alone, or a list such as 80,final",
                )
            try:
                names.append(resolve_checkpoint(run, ref).name)
            except ChatError as exc:
                raise EvalError(f"--checkpoints: {exc.message}", exc.fix) from None
    return tuple(sorted(dict.fromkeys(names), key=_step))


def lm_eval_installed() -> bool:
    return importlib.util.find_spec("lm_eval") is not None


def check_tasks(tasks: tuple[str, ...]) -> None:
    if tasks and not lm_eval_installed():
        raise EvalError(
            f"--tasks {','.join(tasks)} hands off to lm-evaluation-harness, which is not "
            "installed here",
            "install it (`pip install lm-eval`; its task data downloads from the Hugging Face "
            "hub on first use), or drop --tasks",
        )


def _existing_file(path: str, flag: str) -> str:
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise EvalError(f"{flag} {path}: no such file or folder", f"check the path given to {flag}")
    return str(resolved.absolute())


def run_spec(run: RunDir) -> RunSpec:
    """The run's spec.yaml, read as training read it."""
    try:
        return RunSpec.from_dict(read_spec(run))
    except FtuiError as exc:
        raise EvalError(f"run {run.run_id}: {exc.message}", exc.fix) from None


def _check_data(path: str, mode: str) -> None:
    """A `--data` file reads, and holds what the run trained on (chat or plain text)."""
    from engine.data import load_samples

    loaded = load_samples(path)
    chat = loaded.format not in ("text", "preference")
    if loaded.format == "preference" or (mode == "sft") != chat:
        wanted = "chat or instruction records" if mode == "sft" else "plain text records"
        raise EvalError(
            f"--data {path} holds {loaded.format} records; this {mode} run needs {wanted}",
            "give a dataset in the format the run trained on",
        )


def make_request(
    run: RunDir,
    *,
    checkpoints: str = "all",
    data: str | None = None,
    prompts: str | None = None,
    samples: int = DEFAULT_SAMPLES,
    tasks: tuple[str, ...] = (),
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    seed: int | None = None,
    device: str = "auto",
) -> EvalRequest:
    """The request for `ftui eval`, every input checked (files read, names resolved)."""
    from engine.eval.prompts import read_prompts

    if samples < 0:
        raise EvalError(f"--samples {samples} is negative", "use 0 (no generations) or more")
    if max_new_tokens < 1:
        raise EvalError(f"--max-new-tokens {max_new_tokens}", "use 1 or more, e.g. 128")
    if not run.spec.is_file():
        raise EvalError(f"run {run.run_id} has no spec.yaml", "evaluate a run ftui launched")
    names = choose_checkpoints(run, checkpoints)
    if data is not None:
        data = _existing_file(data, "--data")
        _check_data(data, run_spec(run).mode)
    if prompts is not None:
        prompts = _existing_file(prompts, "--prompts")
        read_prompts(prompts)  # a file that does not read is refused now, not in the background
    check_tasks(tasks)
    spec = run_spec(run)
    if spec.is_preference and data is None:
        raise EvalError(
            f"run {run.run_id} trained on preference pairs ({spec.stage}): its loss on them is "
            "not a language-model loss",
            "measure it on chat data with --data FILE (e.g. the chosen answers as conversations)",
        )
    spec_seed = spec.hyper.seed
    return EvalRequest(
        run_path=str(run.path),
        checkpoints=names,
        data=data,
        prompts=prompts,
        samples=samples,
        tasks=tasks,
        max_new_tokens=max_new_tokens,
        seed=spec_seed if seed is None else seed,
        device=device,
    )
