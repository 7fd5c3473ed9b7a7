"""`ftui download MODEL`: a model's weights, config and tokenizer into the Hugging Face cache.

Also what `ftui launch --download` runs before it checks the launch. Progress is a rich bar
(bytes, rate, ETA) on stderr, or JSON lines on stdout with `--json`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from engine.errors import FtuiError, UnknownModelError
from tui.cli.output import emit_json


def add_download_parser(sub: Any) -> None:
    p = sub.add_parser(
        "download",
        help="download a model from the Hugging Face hub into its cache (resumable)",
        description="Download a model's safetensors weights, config and tokenizer into the "
        "Hugging Face cache (HF_HUB_CACHE / HF_HOME), skipping duplicate formats (.bin beside "
        "safetensors, original/, gguf, onnx). Checks free disk first; an interrupted download "
        "resumes on the next call. Honours HF_ENDPOINT (mirrors), HF_TOKEN and `hf auth login`.",
    )
    p.add_argument("model", help="a hub id (org/name) or a built-in profile name")
    p.add_argument("--revision", help="branch, tag or commit (default: main)")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="also download the repo's Python code, for models transformers does not ship",
    )
    p.add_argument("--dry-run", action="store_true", help="show what would be downloaded, stop")
    p.add_argument("--json", action="store_true", help="JSON lines: plan, progress, done")
    p.set_defaults(handler=cmd_download)


def hub_id_for(model: str) -> str:
    """The hub id a user means: `org/name` as typed, or a profile's id on the hub."""
    from engine.hub.settings import looks_like_repo_id
    from profiles import find_model_profile

    profile = find_model_profile(model)
    if profile is not None and profile.hf_id:
        return str(profile.hf_id)
    if looks_like_repo_id(model.strip()):
        return model.strip()
    from engine.models import suggest_models

    raise UnknownModelError(model, suggest_models(model))


def _emit(data: dict[str, Any]) -> None:
    emit_json(data, indent=None)
    sys.stdout.flush()


def download_model(
    model: str,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    as_json: bool = False,
    dry_run: bool = False,
) -> Path | None:
    """Plan, check the disk, download with progress; the snapshot folder (None for a dry run)."""
    from engine.hub.download import check_disk, download, plan_download
    from engine.hub.files import human_bytes

    repo_id = hub_id_for(model)
    plan = plan_download(repo_id, revision, trust_remote_code=trust_remote_code)
    if as_json:
        _emit({"event": "plan", **plan.to_dict()})
    else:
        skipped = plan.selection.skipped_bytes
        sys.stderr.write(
            f"{repo_id} @ {plan.commit[:10]}: {len(plan.selection.files)} files, "
            f"{human_bytes(plan.total_bytes)}"
            + (f" (skipping {human_bytes(skipped)} of other formats)" if skipped else "")
            + f"\n  cache: {plan.cache} ({human_bytes(plan.free_bytes)} free)\n"
        )
        if plan.cached_bytes or plan.partial_bytes:
            sys.stderr.write(
                f"  on disk already: {human_bytes(plan.cached_bytes + plan.partial_bytes)}"
                + (" (resuming)" if plan.partial_bytes else "")
                + "\n"
            )
    check_disk(plan)  # before any byte
    if dry_run:
        return None
    if as_json:
        last = [0.0]

        def report(p: Any) -> None:
            now = time.monotonic()
            if now - last[0] >= 0.2 or p.done >= p.total:
                last[0] = now
                _emit({"event": "progress", "done": p.done, "total": p.total, "file": p.file})

        folder = download(plan, report)
        _emit({"event": "done", "path": str(folder), "bytes": plan.total_bytes})
        return folder
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task(
            "downloading",
            total=plan.total_bytes,
            completed=plan.cached_bytes + plan.partial_bytes,
        )
        folder = download(
            plan, lambda p: bar.update(task, completed=p.done, description=p.file or "done")
        )
        bar.update(task, completed=plan.total_bytes, description="done")
    console.print(f"{repo_id} is in {folder}")
    return folder


def cmd_download(args: argparse.Namespace) -> int:
    download_model(
        args.model,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
        as_json=args.json,
        dry_run=args.dry_run,
    )
    return 0


def download_for_launch(args: argparse.Namespace) -> None:
    """`ftui launch --download`: fetch the model of the flags or the spec file first (a model
    already complete on disk is used as it is, without asking the hub)."""
    model = args.model
    if model is None and args.spec is not None:
        from engine.run.spec import RunSpec

        try:
            model = RunSpec.from_yaml(args.spec.read_text(encoding="utf-8")).model
        except OSError as exc:
            raise FtuiError(f"cannot read {args.spec}: {exc}", "pass a spec.yaml path") from exc
    if not model:
        raise FtuiError("launch needs a spec file, or --model and --data", "see `ftui launch -h`")
    if Path(model).expanduser().is_dir():
        return  # a local folder: nothing to fetch
    from engine.run.preflight import local_model

    try:
        local_model(model)
        return  # whole weights on disk already: no need to ask the hub
    except FtuiError:
        pass
    download_model(model)
