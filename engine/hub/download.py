"""Fetch a model from the hub into the standard Hugging Face cache.

Two entry points. `fetch_config` gets the small files (config, generation config, tokenizer)
so a hub-only model can be planned. `plan_download` + `download` get the weights: the plan
reads the repo's file list (sizes included) and what the cache already holds, `check_disk`
refuses before any byte when it cannot fit, and `download` fetches file by file, reporting
bytes through a callback.

Resuming: `huggingface_hub` downloads into a temporary file unique to each process and deletes
it when interrupted, so a cut 16 GB shard would start over. Weight files not served through
Xet are therefore fetched by ftui into `blobs/<etag>.incomplete` (the cache's own name for a
partial blob; the library's `http_get` does the Range request) under the library's lock for
that blob, checked (size, and sha256 when resumed) and renamed into place; `hf_hub_download`
then links it into the snapshot. Xet files go through `hf_hub_download` directly (hf_xet keeps
its own chunk cache, so they resume too). A file appears in the snapshot only once complete,
the index first: a folder with some shards missing is visibly incomplete (`weights_complete`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from engine.errors import FtuiError
from engine.hub.errors import DownloadInterrupted, hub_errors, offline_error, require_hub
from engine.hub.files import (
    BIN_INDEX,
    SAFETENSORS_INDEX,
    SMALL_FILES,
    NoWeightsError,
    RepoFile,
    Selection,
    download_order,
    human_bytes,
    select_files,
)
from engine.hub.settings import endpoint, model_page, offline
from engine.paths import existing_ancestor, hf_hub_cache

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Progress:
    """Bytes of the whole download: `done` counts what was already on disk."""

    done: int
    total: int
    file: str


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class DownloadPlan:
    repo_id: str
    revision: str  # as asked ("main", a tag, a commit)
    commit: str
    cache: Path
    selection: Selection
    etags: dict[str, str] = field(hash=False, compare=False)  # path -> the blob's name
    cached_bytes: int  # complete files already in the cache
    partial_bytes: int  # bytes of interrupted downloads, kept for resuming
    free_bytes: int  # at the cache's disk

    @property
    def total_bytes(self) -> int:
        return self.selection.total_bytes

    @property
    def missing_bytes(self) -> int:
        return max(0, self.total_bytes - self.cached_bytes - self.partial_bytes)

    @property
    def storage(self) -> Path:
        return self.cache / ("models--" + self.repo_id.replace("/", "--"))

    @property
    def snapshot(self) -> Path:
        return self.storage / "snapshots" / self.commit

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
            "cache": str(self.cache),
            "files": [{"path": f.path, "size": f.size} for f in self.selection.files],
            "skipped": [f.path for f in self.selection.skipped],
            "total_bytes": self.total_bytes,
            "cached_bytes": self.cached_bytes,
            "partial_bytes": self.partial_bytes,
            "missing_bytes": self.missing_bytes,
            "free_bytes": self.free_bytes,
        }


def _repo_folder(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def cached_snapshot(repo_id: str, *, cache: Path | None = None) -> Path | None:
    """The snapshot `refs/main` points at in the HF cache, if there is one (no network)."""
    storage = _repo_folder(cache or hf_hub_cache(), repo_id)
    try:
        commit = (storage / "refs" / "main").read_text().strip()
    except OSError:
        return None
    snapshot = storage / "snapshots" / commit
    return snapshot if commit and snapshot.is_dir() else None


def fetch_config(repo_id: str, revision: str | None = None, *, cache: Path | None = None) -> Path:
    """Download the small files of `repo_id` (config, tokenizer) and return the snapshot
    folder. For planning a model that is on the hub only; no weights."""
    if offline():
        raise offline_error(f"fetch {repo_id}'s config.json")
    require_hub()
    from huggingface_hub import snapshot_download

    _quiet_library()

    with hub_errors(repo_id, revision):
        folder = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=str(cache or hf_hub_cache()),
                allow_patterns=list(SMALL_FILES),
                endpoint=endpoint(),
            )
        )
    if not (folder / "config.json").is_file():
        raise FtuiError(
            f"{repo_id} on {endpoint()} has no config.json: it is not a transformers model",
            "pass a model repo that transformers can load (its files include config.json)",
        )
    return folder


def needs_remote_code(config: dict[str, Any]) -> bool:
    """The config maps the model to the repo's own Python code (`auto_map`) for an architecture
    this transformers does not ship."""
    if not isinstance(config.get("auto_map"), dict):
        return False
    try:
        from transformers.models.auto.configuration_auto import (  # type: ignore[attr-defined]
            CONFIG_MAPPING_NAMES,
        )
    except ImportError:
        return True
    return str(config.get("model_type", "")) not in CONFIG_MAPPING_NAMES


def refuse_remote_code(repo_id: str, config: dict[str, Any], *, trusted: bool) -> None:
    if needs_remote_code(config) and not trusted:
        raise FtuiError(
            f"{repo_id} needs its own Python code from the hub (config.json's auto_map, model "
            f"type {config.get('model_type')!r}): ftui does not run a repo's code unless told to",
            f"read the code at {model_page(repo_id)}/tree/main, then pass --trust-remote-code; "
            "or pick a model transformers supports natively",
        )


def plan_download(
    repo_id: str,
    revision: str | None = None,
    *,
    cache: Path | None = None,
    trust_remote_code: bool = False,
) -> DownloadPlan:
    """What `download` would fetch: the repo's file list with sizes, against the cache."""
    if offline():
        raise offline_error(f"download {repo_id}")
    require_hub()
    from huggingface_hub import HfApi, hf_hub_download

    _quiet_library()

    cache = cache or hf_hub_cache()
    wanted = revision or "main"
    with hub_errors(repo_id, wanted):
        # The endpoint is read now, not when the library was first imported (a TUI lives long).
        info = HfApi(endpoint=endpoint()).model_info(repo_id, revision=wanted, files_metadata=True)
        files = [RepoFile(s.rfilename, int(s.size or 0)) for s in info.siblings or []]
        etags = {
            s.rfilename: (s.lfs.sha256 if s.lfs is not None else str(s.blob_id))
            for s in info.siblings or []
        }
        commit = str(info.sha)
        try:
            selection = select_files(files, trust_remote_code=trust_remote_code)
        except NoWeightsError as exc:
            raise FtuiError(
                f"{repo_id} has no weights ftui can train: {exc}",
                "pass a transformers model repo (safetensors weights); GGUF, ONNX and adapter-"
                "only repos are not base models",
            ) from exc
        if any(f.path == "config.json" for f in selection.files):
            config_path = hf_hub_download(
                repo_id, "config.json", revision=commit, cache_dir=str(cache), endpoint=endpoint()
            )
            config = json.loads(Path(config_path).read_text(encoding="utf-8"))
            refuse_remote_code(repo_id, config, trusted=trust_remote_code)
        if selection.index is not None:
            # The index names the shards: anything else at the top level is a duplicate.
            index_path = hf_hub_download(
                repo_id,
                selection.index,
                revision=commit,
                cache_dir=str(cache),
                endpoint=endpoint(),
            )
            weight_map = json.loads(Path(index_path).read_text(encoding="utf-8"))["weight_map"]
            selection = select_files(
                files, shards=set(weight_map.values()), trust_remote_code=trust_remote_code
            )
    storage = _repo_folder(cache, repo_id)
    cached = partial = 0
    for f in selection.files:
        blob = storage / "blobs" / etags.get(f.path, "")
        if (storage / "snapshots" / commit / f.path).exists() or blob.is_file():
            cached += f.size
        else:
            incomplete = blob.with_name(blob.name + ".incomplete")
            partial += incomplete.stat().st_size if incomplete.is_file() else 0
    free = shutil.disk_usage(existing_ancestor(cache)).free
    return DownloadPlan(
        repo_id=repo_id,
        revision=wanted,
        commit=commit,
        cache=cache,
        selection=selection,
        etags=etags,
        cached_bytes=cached,
        partial_bytes=partial,
        free_bytes=free,
    )


def check_disk(plan: DownloadPlan) -> None:
    """Refuse, before any byte, a download that does not fit at the cache's disk."""
    if plan.missing_bytes <= plan.free_bytes:
        return
    raise FtuiError(
        f"{plan.repo_id} needs {human_bytes(plan.missing_bytes)} more, and the Hugging Face "
        f"cache at {plan.cache} has {human_bytes(plan.free_bytes)} free",
        "free some space there, or point HF_HUB_CACHE (or HF_HOME) at a bigger disk "
        f"and run it again (total download {human_bytes(plan.total_bytes)})",
    )


def _quiet_library() -> None:
    """The library's own tqdm bars would garble ftui's output: ftui shows its own."""
    from huggingface_hub.utils import disable_progress_bars  # type: ignore[attr-defined]

    disable_progress_bars()


def _xet_available() -> bool:
    """Whether `hf_hub_download` would take the Xet path for a Xet-backed file."""
    import importlib.util

    from huggingface_hub import constants

    return not constants.HF_HUB_DISABLE_XET and importlib.util.find_spec("hf_xet") is not None


class _Silent:
    """The tqdm interface the library's downloaders call, showing nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.total = kwargs.get("total")
        self.n = kwargs.get("initial", 0)

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, n: float | None = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        pass

    def refresh(self, *args: Any, **kwargs: Any) -> None:
        pass


class _Counter:
    """Adds the bytes the library reports to a shared total and passes it to the callback."""

    def __init__(self, plan: DownloadPlan, done: int, callback: ProgressCallback | None) -> None:
        self.plan = plan
        self.done = done
        self.file = ""
        self.callback = callback

    def tqdm_class(self) -> type[_Silent]:
        counter = self

        class Bar(_Silent):
            def update(self, n: float | None = 1) -> None:
                counter.add(int(n or 0))

        return Bar

    def add(self, n: int) -> None:
        self.done += n
        if self.callback is not None:
            self.callback(Progress(self.done, self.plan.total_bytes, self.file))


def download(plan: DownloadPlan, on_progress: ProgressCallback | None = None) -> Path:
    """Fetch every missing file of `plan` into the cache; the snapshot folder. Interrupting it
    keeps the partial blobs: the next call resumes them."""
    from huggingface_hub import hf_hub_download

    counter = _Counter(plan, plan.cached_bytes + plan.partial_bytes, on_progress)
    bar = counter.tqdm_class()
    try:
        with hub_errors(plan.repo_id, plan.revision):
            for f in download_order(plan.selection):
                counter.file = f.path
                if (plan.snapshot / f.path).exists():
                    continue
                if f.path.endswith((".safetensors", ".bin")):
                    _fetch_blob(plan, f, bar)
                hf_hub_download(
                    plan.repo_id,
                    f.path,
                    revision=plan.commit,
                    cache_dir=str(plan.cache),
                    endpoint=endpoint(),
                    tqdm_class=bar,  # type: ignore[arg-type]
                )
                counter.add(0)
    except KeyboardInterrupt as exc:
        kept = _partial_bytes(plan) + _complete_bytes(plan)
        raise DownloadInterrupted(
            f"download of {plan.repo_id} interrupted: {human_bytes(kept)} of "
            f"{human_bytes(plan.total_bytes)} kept in {plan.storage}",
            f"run `ftui download {plan.repo_id}` again: it resumes where it stopped",
        ) from exc
    if not _COMMIT.match(plan.revision):
        ref = plan.storage / "refs" / plan.revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref.with_name(ref.name + ".ftui-tmp")
        tmp.write_text(plan.commit)
        os.replace(tmp, ref)
    return plan.snapshot


def _partial_bytes(plan: DownloadPlan) -> int:
    blobs = plan.storage / "blobs"
    return sum(p.stat().st_size for p in blobs.glob("*.incomplete")) if blobs.is_dir() else 0


def _complete_bytes(plan: DownloadPlan) -> int:
    return sum(f.size for f in plan.selection.files if (plan.snapshot / f.path).exists())


def _fetch_blob(plan: DownloadPlan, f: RepoFile, bar: type[_Silent]) -> None:
    """Download one weight file into `blobs/<etag>`, resuming `blobs/<etag>.incomplete`."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import (  # type: ignore[attr-defined]
        WeakFileLock,
        build_hf_headers,
    )

    url = hf_hub_url(plan.repo_id, f.path, revision=plan.commit, endpoint=endpoint())
    meta = get_hf_file_metadata(url, endpoint=endpoint())
    if meta.xet_file_data is not None and _xet_available():
        return  # hf_hub_download's Xet path, which resumes through hf_xet's chunk cache
    if not meta.etag:
        return
    blob = plan.storage / "blobs" / meta.etag
    if blob.is_file():
        return
    blob.parent.mkdir(parents=True, exist_ok=True)
    incomplete = blob.with_name(blob.name + ".incomplete")
    lock = plan.cache / ".locks" / plan.storage.name / f"{meta.etag}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    headers = build_hf_headers()
    location = meta.location or url
    if urlsplit(location).netloc != urlsplit(url).netloc:
        headers.pop("authorization", None)  # a signed CDN address: the token stays home
    with WeakFileLock(str(lock)):
        if blob.is_file():
            return
        resumed = incomplete.stat().st_size if incomplete.is_file() else 0
        with incomplete.open("ab") as out:
            http_get(
                location,
                out,
                resume_size=resumed,
                headers=headers,
                expected_size=meta.size,
                displayed_filename=f.path,
                tqdm_class=bar,  # type: ignore[arg-type]
            )
        if resumed and _SHA256.match(meta.etag) and _sha256(incomplete) != meta.etag:
            incomplete.unlink()
            raise FtuiError(
                f"{f.path} of {plan.repo_id} did not match its checksum after resuming "
                "(the file changed on the hub, or the partial copy was damaged)",
                f"run `ftui download {plan.repo_id}` again: it starts that file over",
            )
        os.replace(incomplete, blob)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(8 * 1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_complete(folder: Path) -> bool:
    """The folder holds whole weights: every shard its index names, or a single weight file."""
    for index in (SAFETENSORS_INDEX, BIN_INDEX):
        path = folder / index
        if path.is_file():
            try:
                shards = set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values())
            except (OSError, ValueError, KeyError, AttributeError):
                return False
            return all((folder / shard).is_file() for shard in shards)
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))


def missing_weights_error(repo_id: str) -> FtuiError:
    """The weights are not on this machine: say how big they are and offer the download when
    the hub can be asked; else say what to do offline."""
    where = f"`ftui download {repo_id}`, or launch with --download"
    if offline():
        return FtuiError(
            f"the weights of {repo_id} are not on this machine, and HF_HUB_OFFLINE is set",
            f"unset HF_HUB_OFFLINE and run {where}; or pass a local model directory",
        )
    try:
        plan = plan_download(repo_id)
    except FtuiError as error:
        return FtuiError(
            f"the weights of {repo_id} are not on this machine, and the hub cannot give them: "
            f"{error.message}",
            error.fix,
        )
    return FtuiError(
        f"the weights of {repo_id} are not on this machine "
        f"({human_bytes(plan.missing_bytes)} to download, "
        f"{human_bytes(plan.free_bytes)} free at {plan.cache})",
        f"run {where} to fetch them first",
    )
