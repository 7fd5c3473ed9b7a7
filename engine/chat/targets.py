"""What a chat loads: a base model and the adapters (checkpoints) to put on it, resolved from a
run directory (`ftui chat RUN`) or from a model and an adapter directory (`--model/--adapter`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.chat.core import BASE, FINAL, ChatError
from engine.run.rundir import RunDir, read_json, read_spec


@dataclass(frozen=True)
class AdapterRef:
    name: str  # final, checkpoint-N, adapter
    path: Path


@dataclass(frozen=True)
class ChatTarget:
    """A base model and the adapters to put on it (none: chat with the model itself)."""

    base_model: str  # a local directory or an HF id (in the local cache)
    adapters: tuple[AdapterRef, ...]  # the first one answers by default
    tokenizer_source: str
    label: str  # what the user chats with, for titles: the run id or the model's name
    method: str = "lora"  # lora, qlora, full, or another of the PEFT family
    dtype: str = "bf16"  # compute dtype on a GPU (the CPU computes in fp32)
    device: str = "auto"  # auto, cuda, cpu
    run: RunDir | None = None
    compare: str | None = None  # BASE or another adapter's name

    @property
    def primary(self) -> str:
        return self.adapters[0].name if self.adapters else Path(self.base_model).name


def _checkpoint_dirs(run: RunDir) -> list[tuple[str, Path]]:
    found = [(FINAL, run.final)] if _is_model_dir(run.final) else []
    found += [(p.name, p) for p in reversed(run.checkpoints_complete()) if _is_model_dir(p)]
    return found


def _is_model_dir(path: Path) -> bool:
    return (path / "adapter_config.json").is_file() or (path / "config.json").is_file()


def run_checkpoints(run: RunDir) -> list[str]:
    """What a run offers to chat with: `final` first, then the checkpoints, newest first."""
    return [name for name, _ in _checkpoint_dirs(run)]


def _no_adapter_yet(run: RunDir) -> ChatError:
    state = run.read_state()
    status = state.get("status", "unknown")
    return ChatError(
        f"run {run.run_id} ({status}) has no adapter yet: no final/ and no complete checkpoint",
        f"wait for its first checkpoint, or ask for one now with `ftui save {run.run_id}`"
        if status in ("running", "starting")
        else f"see why with `ftui status {run.run_id}`; resume or relaunch it",
    )


def resolve_checkpoint(run: RunDir, ref: str | None = None) -> AdapterRef:
    """`final` (the default; the newest checkpoint while there is no final yet), `checkpoint-N`
    or `N`."""
    available = _checkpoint_dirs(run)
    if not available:
        raise _no_adapter_yet(run)
    if ref is None:
        name, path = available[0]
        return AdapterRef(name, path)
    wanted = ref.strip()
    if wanted.isdigit():
        wanted = f"checkpoint-{int(wanted)}"
    for name, path in available:
        if name == wanted:
            return AdapterRef(name, path)
    raise ChatError(
        f"run {run.run_id} has no checkpoint {ref!r}",
        "choose one of: " + ", ".join(name for name, _ in available),
    )


def run_base_model(run: RunDir, adapter_dir: Path | None = None) -> str:
    """The base a run trained: final/ftui.json, else spec.yaml, else the adapter's config."""
    marker = read_json(run.final / "ftui.json")
    spec = read_spec(run)
    for candidate in (
        marker.get("base_model_path"),
        spec.get("model_path"),
        marker.get("base_model"),
        spec.get("model"),
        read_json(adapter_dir / "adapter_config.json").get("base_model_name_or_path")
        if adapter_dir
        else None,
    ):
        if candidate and (not str(candidate).startswith(("/", ".")) or Path(candidate).is_dir()):
            return str(candidate)
    raise ChatError(
        f"cannot tell which base model run {run.run_id} trained",
        "chat with its adapter directly: ftui chat --model BASE --adapter DIR",
    )


def _has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer_config.json").is_file()


def run_target(
    run: RunDir, checkpoint: str | None = None, compare: str | None = None, device: str = "auto"
) -> ChatTarget:
    """What `ftui chat RUN [--checkpoint N] [--compare base|CHECKPOINT]` loads."""
    ref = resolve_checkpoint(run, checkpoint)
    training = read_spec(run).get("training") or {}
    method = str(training.get("method") or read_json(run.final / "ftui.json").get("method") or "")
    dtype = str(training.get("dtype") or "bf16")
    if method == "full" or not (ref.path / "adapter_config.json").is_file():
        if compare:
            raise ChatError(
                f"run {run.run_id} is a full fine-tune: there is no adapter to compare",
                "compare it with its base by running `ftui chat --model BASE` beside it",
            )
        return ChatTarget(str(ref.path), (), str(ref.path), f"{run.run_id} · {ref.name}",
                          "full", dtype, device, run)  # fmt: skip
    adapters = [ref]
    if compare and compare != BASE:
        other = resolve_checkpoint(run, compare)
        if other.name == ref.name:
            raise ChatError(
                f"--compare {compare} is the checkpoint already chatting", "compare with base"
            )
        adapters.append(other)
        compare = other.name
    base = run_base_model(run, ref.path)
    tokenizer = ref.path if _has_tokenizer(ref.path) else run.final
    return ChatTarget(
        base_model=base,
        adapters=tuple(adapters),
        tokenizer_source=str(tokenizer if _has_tokenizer(tokenizer) else base),
        label=run.run_id,
        method=method or "lora",
        dtype=dtype,
        device=device,
        run=run,
        compare=compare,
    )


def resolve_base_model(model: str) -> str:
    """A local model directory, or the cached snapshot of a hub model or profile."""
    if Path(model).expanduser().is_dir():
        return str(Path(model).expanduser().absolute())
    from engine.models import resolve_model

    arch = resolve_model(model)
    if arch.path:
        return arch.path
    if arch.hf_id:
        cached = resolve_model(arch.hf_id)
        if cached.path:
            return cached.path
    raise ChatError(
        f"the weights of {model} are not on this machine",
        f"download them first (`hf download {arch.hf_id or model}`) or pass a local directory",
    )


def adapter_target(
    model: str,
    adapter: str | None = None,
    *,
    method: str = "lora",
    dtype: str = "bf16",
    device: str = "auto",
    compare: str | None = None,
) -> ChatTarget:
    """What `ftui chat --model M [--adapter DIR]` loads, outside any run."""
    base = resolve_base_model(model)
    if adapter is None:
        if compare:
            raise ChatError("--compare needs an adapter", "add --adapter DIR")
        return ChatTarget(base, (), base, Path(base).name, "full", dtype, device)
    path = Path(adapter).expanduser().absolute()
    if not (path / "adapter_config.json").is_file():
        raise ChatError(
            f"{path} holds no adapter_config.json",
            "point --adapter at a PEFT adapter directory (a run's final/ or checkpoint-N/)",
        )
    if compare not in (None, BASE):
        raise ChatError("outside a run, --compare can only be base", "use --compare base")
    tokenizer = str(path) if _has_tokenizer(path) else base
    return ChatTarget(base, (AdapterRef("adapter", path),), tokenizer, path.name,
                      method, dtype, device, None, compare)  # fmt: skip


def adapter_kind(path: Path) -> str:
    """PEFT's name of the adapter's type (LORA, PREFIX_TUNING, IA3, ...)."""
    return str(read_json(path / "adapter_config.json").get("peft_type") or "LORA")


def adapters_target(
    refs: list[str], *, device: str = "auto", compare: str | None = None
) -> ChatTarget:
    """What `ftui chat --adapters RUN[:CKPT],RUN[:CKPT]...` loads: one base, each run's
    adapter on it under the run's id (`RUN-checkpoint-N` for a checkpoint)."""
    from engine.run.rundir import find_run

    if len(refs) < 1 or not all(r.strip() for r in refs):
        raise ChatError("--adapters is empty", "e.g. --adapters RUN_A,RUN_B:checkpoint-200")
    loaded: list[AdapterRef] = []
    bases: dict[str, str] = {}
    kinds: dict[str, str] = {}
    first_run: RunDir | None = None
    method, dtype = "lora", "bf16"
    for ref in refs:
        run_ref, _, checkpoint = ref.strip().partition(":")
        run = find_run(run_ref)
        chosen = resolve_checkpoint(run, checkpoint or None)
        if not (chosen.path / "adapter_config.json").is_file():
            raise ChatError(
                f"run {run.run_id} trained the whole model ({chosen.name} holds no adapter)",
                f"chat with it on its own: ftui chat {run.run_id}",
            )
        name = run.run_id if chosen.name == FINAL else f"{run.run_id}-{chosen.name}"
        if any(a.name == name for a in loaded):
            raise ChatError(f"--adapters names {name} twice", "name each adapter once")
        loaded.append(AdapterRef(name, chosen.path))
        base = run_base_model(run, chosen.path)
        bases[name] = str(Path(base).resolve()) if Path(base).is_dir() else base
        kinds[name] = adapter_kind(chosen.path)
        if first_run is None:
            first_run = run
            training = read_spec(run).get("training") or {}
            method = str(training.get("method") or "lora")
            dtype = str(training.get("dtype") or "bf16")
    if len(set(bases.values())) > 1:
        listed = "; ".join(f"{n}: {b}" for n, b in bases.items())
        raise ChatError(
            f"--adapters: the runs trained different base models ({listed})",
            "load adapters of one base together; chat with the others separately",
        )
    if len(set(kinds.values())) > 1:
        listed = ", ".join(f"{n} ({k})" for n, k in kinds.items())
        raise ChatError(
            f"--adapters: PEFT keeps adapters of one kind on a base, these differ: {listed}",
            "load runs of one method together (e.g. the LoRA runs), the others separately",
        )
    names = [a.name for a in loaded]
    if compare not in (None, BASE, *names[1:]):
        raise ChatError(
            f"--compare {compare} is not one of the other adapters",
            f"use base or one of: {', '.join(names[1:]) or '(only one adapter loaded)'}",
        )
    base = next(iter(bases.values()))
    tokenizer = loaded[0].path if _has_tokenizer(loaded[0].path) else Path(base)
    return ChatTarget(
        base_model=base,
        adapters=tuple(loaded),
        tokenizer_source=str(tokenizer),
        label=" + ".join(names),
        method=method,
        dtype=dtype,
        device=device,
        run=None,
        compare=compare,
    )


def target_to_dict(target: ChatTarget) -> dict[str, Any]:
    return {
        "base_model": target.base_model,
        "adapters": [[a.name, str(a.path)] for a in target.adapters],
        "tokenizer_source": target.tokenizer_source,
        "label": target.label,
        "method": target.method,
        "dtype": target.dtype,
        "device": target.device,
        "run": str(target.run.path) if target.run else None,
        "compare": target.compare,
    }


def target_from_dict(data: dict[str, Any]) -> ChatTarget:
    return ChatTarget(
        base_model=data["base_model"],
        adapters=tuple(AdapterRef(name, Path(path)) for name, path in data["adapters"]),
        tokenizer_source=data["tokenizer_source"],
        label=data["label"],
        method=data["method"],
        dtype=data["dtype"],
        device=data["device"],
        run=RunDir(Path(data["run"])) if data["run"] else None,
        compare=data["compare"],
    )
