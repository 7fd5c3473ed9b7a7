"""Export a run as a standalone folder: its adapter, or the base with the adapter merged in.

    export_run(run, Path("out"))                 adapter_model.safetensors, adapter_config.json,
                                                 the tokenizer, README.md (model card)
    export_run(run, Path("out"), merge=True)     model*.safetensors + config.json (the LoRA
                                                 merged into the base), the tokenizer, README.md

The model card lists the run's spec and its final metrics (metrics.jsonl, state.json). A
non-empty output directory is refused unless `force`; with it, files of the same names are
replaced and every other file is left alone. The export is written to a temporary folder next
to the output first, so a failure (a merge out of memory) leaves no half-written model.

Headless and cheap to import: torch, transformers and peft load inside the functions.
"""

from __future__ import annotations

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

# Trainer checkpoints hold optimizer state and the like: only these travel with a full model.
FULL_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")


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


def check_out_dir(out_dir: Path, *, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ChatError(f"{out_dir} is a file, not a directory", "choose a directory for --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        count = sum(1 for _ in out_dir.iterdir())
        raise ChatError(
            f"{out_dir} is not empty ({count} entries): refusing to write into it",
            "choose a new or empty directory, or add --force to write into it (files with the "
            "export's names are replaced, other files are kept)",
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


def _move_into(staging: Path, out_dir: Path) -> list[str]:
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return sorted(p.name for p in out_dir.iterdir())
    names = sorted(p.name for p in staging.iterdir())
    for name in names:
        target = out_dir / name
        if target.is_dir() and not target.is_symlink():
            raise ChatError(f"{target} is a directory in the way", "remove it or use another --out")
        os.replace(staging / name, target)
    staging.rmdir()
    return names


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

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.export-"))
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
        (staging / "ftui.json").write_text(
            json.dumps(
                {"run_id": run.run_id, "checkpoint": ref.name, "kind": kind,
                 "base_model": base_model, "exported_at": time.time()},
                indent=2,
            ) + "\n"
        )  # fmt: skip
        files = _move_into(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(out_dir, kind, ref.name, base_model, tuple(files))
