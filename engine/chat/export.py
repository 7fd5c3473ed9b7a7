"""Export a run as a standalone folder: its adapter, or the base with the adapter merged in.

    export_run(run, Path("out"))                 adapter_model.safetensors, adapter_config.json,
                                                 the tokenizer, README.md (model card)
    export_run(run, Path("out"), merge=True)     model*.safetensors + config.json (the LoRA
                                                 merged into the base), the tokenizer, README.md

The model card lists the run's spec and its final metrics (metrics.jsonl, state.json). A
non-empty output directory is refused unless `force`. The export is written to a temporary
folder next to the output first, so a failure (a merge out of memory) leaves no half-written
model, then swapped in: with `force` over an earlier export, the files that export wrote
(ftui.json lists them) go and the user's own files stay, so the folder loads as what was just
exported. A folder ftui did not write is never emptied: `force` writes beside its files, and
refuses when it holds model files that would mix with the export's (an adapter_config.json
beside merged weights loads as an adapter).

Headless and cheap to import: torch, transformers and peft load inside the functions.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.chat import (
    AdapterRef,
    ChatError,
    ProgressCallback,
    read_spec,
    resolve_checkpoint,
    run_base_model,
)
from engine.run.rundir import JsonlTail, RunDir, read_json
from engine.training_config import PARTIAL_METHODS

# Trainer checkpoints hold optimizer state and the like: only these travel with a full model.
FULL_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")
# Files transformers or PEFT read when loading a folder: two models' worth in one folder mix.
MODEL_FILE_PATTERNS = (
    "config.json", "generation_config.json", "adapter_config.json", "adapter_model.*",
    "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "*.bin.index.json",
    "tokenizer*", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
    "vocab.json", "merges.txt",
)  # fmt: skip


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    kind: str  # adapter, merged, full
    checkpoint: str
    base_model: str
    files: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "kind": self.kind,
            "checkpoint": self.checkpoint,
            "base_model": self.base_model,
            "files": list(self.files),
        }


def _model_files(names: list[str]) -> list[str]:
    return [n for n in names if any(fnmatch.fnmatch(n, p) for p in MODEL_FILE_PATTERNS)]


def earlier_export(out_dir: Path) -> set[str] | None:
    """The names an earlier ftui export wrote into `out_dir` (with any model files beside
    them), or None when ftui did not write it."""
    try:
        marker = json.loads((out_dir / "ftui.json").read_text(encoding="utf-8"))
        names = [p.name for p in out_dir.iterdir()]
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or "run_id" not in marker or "kind" not in marker:
        return None
    listed = marker.get("files")
    written = {str(n) for n in listed} if isinstance(listed, list) else set()
    return written | set(_model_files(names)) | {"README.md", "ftui.json"}


def check_out_dir(out_dir: Path, *, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ChatError(f"{out_dir} is a file, not a directory", "choose a directory for --out")
    try:
        names = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    except OSError as exc:
        raise ChatError(
            f"cannot read {out_dir}: {exc.strerror or exc}", "choose a folder you can write to"
        ) from exc
    if not names:
        return
    if not force:
        raise ChatError(
            f"{out_dir} is not empty ({len(names)} entries): refusing to write into it",
            "choose a new or empty directory, or add --force (an earlier export there is "
            "replaced; files ftui did not write are kept)",
        )
    if earlier_export(out_dir) is None and (theirs := _model_files(names)):
        raise ChatError(
            f"{out_dir} holds model files ftui did not write ({', '.join(theirs[:5])}): the "
            "export beside them would not load as what was exported",
            "choose a new or empty directory, or move those files away first",
        )


def final_metrics(run: RunDir) -> dict[str, Any]:
    """The last logged training step, the last evaluation, and the trainer's summary."""
    out: dict[str, Any] = {}
    for record in JsonlTail(run.metrics).read():
        if "loss" in record:
            out["step"] = record.get("step")
            out["epoch"] = record.get("epoch")
            out["loss"] = record.get("loss")
        if record.get("eval_loss") is not None:
            out["eval_loss"] = record["eval_loss"]
    state = run.read_state()
    for key, value in (state.get("summary") or {}).items():
        out.setdefault(key, value)
    out["status"] = state.get("status")
    return {k: v for k, v in out.items() if v is not None}


def _table(rows: list[tuple[str, Any]]) -> list[str]:
    lines = ["| field | value |", "|---|---|"]
    for name, value in rows:
        if isinstance(value, float):
            value = f"{value:.6g}"
        elif isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value))
        lines.append(f"| {name} | {str(value).replace('|', '/')} |")
    return lines


def model_card(
    run: RunDir, ref: AdapterRef, kind: str, base_model: str, dtype: str | None = None
) -> str:
    spec = read_spec(run)
    training = spec.get("training") or {}
    hyper = spec.get("hyper") or {}
    method = training.get("method", "lora")
    library = "peft" if kind == "adapter" else "transformers"
    shown_base = spec.get("model") or base_model
    lines = [
        "---",
        f"base_model: {json.dumps(str(shown_base))}",
        f"library_name: {library}",
        "pipeline_tag: text-generation",
        "tags:",
        "- ftui",
        f"- {method}",
        *(["- merged"] if kind == "merged" else []),
        "---",
        "",
        f"# {run.run_id}",
        "",
    ]
    what = {
        "adapter": f"The {method.upper()} adapter of checkpoint `{ref.name}`, for the base "
        f"model `{shown_base}`.",
        "merged": f"`{shown_base}` with the {method.upper()} adapter of checkpoint `{ref.name}` "
        f"merged into its weights (saved as {dtype}).",
        "full": f"The fully fine-tuned model of checkpoint `{ref.name}` (from `{shown_base}`).",
    }[kind]
    lines += [what + " Trained and exported with ftui.", ""]
    if kind == "merged" and method == "qlora":
        lines += [
            "The adapter was trained against the 4-bit NF4 base; it is merged here into the "
            "16-bit base weights, so answers can differ slightly from the QLoRA model's.",
            "",
        ]
    lines += ["## Use", "", "```python"]
    if kind == "adapter":
        lines += [
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f"base = AutoModelForCausalLM.from_pretrained({str(base_model)!r})",
            'model = PeftModel.from_pretrained(base, "path/to/this/folder")',
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        ]
    else:
        lines += [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        ]
    lines += ["```", "", "## Training spec", ""]
    rows: list[tuple[str, Any]] = [("base model", shown_base), ("data", spec.get("data", "?"))]
    rows += [(f"training.{k}", v) for k, v in training.items()]
    rows += [(f"hyper.{k}", v) for k, v in hyper.items()]
    lines += [*_table(rows), "", "## Final metrics", ""]
    metrics = final_metrics(run)
    lines += _table(list(metrics.items())) if metrics else ["No metrics were logged."]
    return "\n".join(lines) + "\n"


def _save_tokenizer(source: Path | str, out: Path) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(source), local_files_only=True).save_pretrained(str(out))


def _write_adapter(ref: AdapterRef, base_model: str, out: Path) -> None:
    weights = ref.path / "adapter_model.safetensors"
    if weights.is_file():
        shutil.copy2(weights, out / weights.name)
    else:  # older PEFT wrote pickled weights: convert them
        legacy = ref.path / "adapter_model.bin"
        if not legacy.is_file():
            raise ChatError(f"{ref.path} holds no adapter weights", "export another checkpoint")
        import torch
        from safetensors.torch import save_file

        state = torch.load(legacy, map_location="cpu", weights_only=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(out / weights.name))
    config = read_json(ref.path / "adapter_config.json")
    if not config.get("base_model_name_or_path"):
        config["base_model_name_or_path"] = base_model  # PEFT leaves it None for local models
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")


def _write_merged(ref: AdapterRef, base_model: str, dtype_name: str, out: Path) -> None:
    """Base in 16/32-bit on the CPU (never quantised: merging into 4-bit weights loses them),
    the adapter merged in, saved as safetensors."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype_name, torch.float32)
    base = AutoModelForCausalLM.from_pretrained(
        base_model, dtype=dtype, local_files_only=True, device_map={"": "cpu"}
    )
    merged = PeftModel.from_pretrained(base, str(ref.path)).merge_and_unload()
    merged.save_pretrained(str(out))


def _write_full(ref: AdapterRef, out: Path) -> None:
    names = [*FULL_MODEL_FILES, *(p.name for p in ref.path.glob("*.safetensors"))]
    for name in names:
        if (ref.path / name).is_file():
            shutil.copy2(ref.path / name, out / name)
    if not any(out.glob("*.safetensors")):
        raise ChatError(f"{ref.path} holds no model weights (*.safetensors)", "pick another one")


def _move_into(staging: Path, out_dir: Path) -> None:
    """Into a folder ftui did not write (checked to hold no model files): beside its files."""
    for entry in sorted(staging.iterdir()):
        target = out_dir / entry.name
        if target.is_dir() and not target.is_symlink():
            raise ChatError(f"{target} is a directory in the way", "remove it or use another --out")
        os.replace(entry, target)
    staging.rmdir()


def _install(staging: Path, out_dir: Path) -> None:
    """Put the finished export in place: a rename when `out_dir` is new or empty; over an
    earlier export, a swap that keeps the user's own files and drops the old export's."""
    previous = earlier_export(out_dir) if out_dir.is_dir() else None
    if not out_dir.exists() or (previous is None and not any(out_dir.iterdir())):
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(staging, out_dir)
        return
    if previous is None:
        _move_into(staging, out_dir)
        return
    new = {p.name for p in staging.iterdir()}
    trash = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
    old = trash / "old"
    try:
        os.replace(out_dir, old)  # from here the old export is whole in `old` until the swap
    except OSError:
        trash.rmdir()
        raise
    kept = [n for n in sorted(p.name for p in old.iterdir()) if n not in previous | new]
    moved: list[str] = []
    try:
        for name in kept:
            os.replace(old / name, staging / name)
            moved.append(name)
        os.replace(staging, out_dir)
    except OSError:
        for name in moved:  # put the user's files back where they were
            os.replace(staging / name, old / name)
        os.replace(old, out_dir)
        trash.rmdir()
        raise
    shutil.rmtree(trash, ignore_errors=True)


def check_mergeable(adapter_dir: Path) -> None:
    """Refuse --merge for an adapter that changes no weight (prompt learning, llama-adapter)."""
    from engine.plan.methods import MERGE_REFUSALS, PEFT_TYPE_METHODS

    peft_type = str(read_json(adapter_dir / "adapter_config.json").get("peft_type") or "LORA")
    method = PEFT_TYPE_METHODS.get(peft_type)
    if method in MERGE_REFUSALS:
        raise ChatError(
            f"--merge: {MERGE_REFUSALS[method]}, so there is nothing to fold into the base",
            "export without --merge (the adapter loads on the base with PEFT), or train "
            "--method lora / ia3 for a mergeable result",
        )


def export_run(
    run: RunDir,
    out_dir: Path,
    *,
    checkpoint: str | None = None,
    merge: bool = False,
    force: bool = False,
    progress: ProgressCallback | None = None,
) -> ExportResult:
    """Write a run's adapter (or, with `merge`, a full merged model) to `out_dir`."""
    out_dir = out_dir.expanduser().absolute()
    ref = resolve_checkpoint(run, checkpoint)
    if out_dir.resolve() in (ref.path.resolve(), run.path.resolve()):
        raise ChatError(f"{out_dir} is part of the run itself", "export to another directory")
    check_out_dir(out_dir, force=force)
    spec = read_spec(run)
    training = spec.get("training") or {}
    is_adapter = (ref.path / "adapter_config.json").is_file()
    kind = ("merged" if merge else "adapter") if is_adapter else "full"
    if kind == "merged":
        check_mergeable(ref.path)
    method = str(training.get("method") or "")
    if kind == "full" and merge and method in PARTIAL_METHODS:
        merge = False  # bias / freeze trained the model's own weights: already whole
    if kind == "full" and merge:
        raise ChatError(
            f"run {run.run_id} is a full fine-tune: there is no adapter to merge",
            "drop --merge (the export is already a complete model)",
        )
    base_model = run_base_model(run, ref.path) if is_adapter else str(ref.path)
    dtype = str(training.get("dtype") or "bf16")
    steps = ["tokenizer", {"adapter": "adapter", "merged": "merge", "full": "model"}[kind], "card"]

    def stage(index: int) -> None:
        if progress is not None:
            progress(steps[index], index + 1, len(steps))

    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.export-"))
        staging.chmod(0o755)
    except OSError as exc:
        raise ChatError(
            f"cannot write {out_dir}: {exc.strerror or exc}",
            "choose a folder you can write to for --out",
        ) from exc
    try:
        stage(0)
        tokenizer_source = (
            ref.path if (ref.path / "tokenizer_config.json").is_file() else base_model
        )
        _save_tokenizer(tokenizer_source, staging)
        stage(1)
        if kind == "adapter":
            _write_adapter(ref, base_model, staging)
        elif kind == "merged":
            _write_merged(ref, base_model, dtype, staging)
        else:
            _write_full(ref, staging)
        stage(2)
        card = model_card(run, ref, kind, base_model, dtype)
        (staging / "README.md").write_text(card, encoding="utf-8")
        written = sorted([*(p.name for p in staging.iterdir()), "ftui.json"])
        (staging / "ftui.json").write_text(
            json.dumps(
                {"run_id": run.run_id, "checkpoint": ref.name, "kind": kind,
                 "base_model": base_model, "exported_at": time.time(), "files": written},
                indent=2,
            ) + "\n"
        )  # fmt: skip
        _install(staging, out_dir)
        files = written
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ChatError(
            f"writing the export to {out_dir} failed: {exc.strerror or exc}",
            "check the folder's free space and permissions, or choose another --out",
        ) from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(out_dir, kind, ref.name, base_model, tuple(files))


def push_export(result: ExportResult, repo_id: str, *, private: bool = False) -> str:
    """Upload an export (adapter or model, with its model card) to the hub; the repo's page.
    The token stays with huggingface_hub: nothing of it reaches the export or the run."""
    from engine.hub.push import push_folder

    return push_folder(
        result.out_dir,
        repo_id,
        private=private,
        message=f"ftui export of {result.kind} ({result.checkpoint}, base {result.base_model})",
    )
