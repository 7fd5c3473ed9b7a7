"""Which of a hub repo's files a fine-tune needs: one copy of the weights, config, tokenizer.

Repos often ship the same weights several times (`pytorch_model*.bin` beside safetensors,
Meta's `original/consolidated.pth`, Mistral's `consolidated.safetensors`, GGUF and ONNX
exports); downloading them all can triple the bytes. The rules, in order: safetensors at the
top level when there are any (the index's shards when there is an index), else `.bin`; never
a subfolder's weights; the config and tokenizer files; `*.py` only when the user trusts the
repo's code.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

# Small files a model needs besides its weights (what transformers' from_pretrained reads).
CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
SMALL_FILES = CONFIG_FILES + TOKENIZER_FILES
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"


@dataclass(frozen=True)
class RepoFile:
    path: str
    size: int


@dataclass(frozen=True)
class Selection:
    """What to download and what was left out (for the summary line)."""

    files: tuple[RepoFile, ...]
    skipped: tuple[RepoFile, ...]
    weights_format: str  # "safetensors" or "bin"

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def skipped_bytes(self) -> int:
        return sum(f.size for f in self.skipped)

    @property
    def index(self) -> str | None:
        names = {f.path for f in self.files}
        return next((i for i in (SAFETENSORS_INDEX, BIN_INDEX) if i in names), None)


class NoWeightsError(ValueError):
    """A repo with no transformers weights (GGUF-only, ONNX-only, adapters, datasets)."""


def select_files(
    files: list[RepoFile], *, shards: set[str] | None = None, trust_remote_code: bool = False
) -> Selection:
    """Pick the files to download. `shards`: the index's weight_map files when it is known."""
    top = [f for f in files if "/" not in f.path]
    safetensors = [f for f in top if f.path.endswith(".safetensors")]
    bins = [f for f in top if fnmatch.fnmatch(f.path, "pytorch_model*.bin")]
    if safetensors:
        fmt, index = "safetensors", SAFETENSORS_INDEX
        weights = safetensors
    elif bins:
        fmt, index = "bin", BIN_INDEX
        weights = bins
    else:
        raise NoWeightsError("no safetensors or pytorch_model*.bin weights at the repo's top level")
    names = {f.path for f in top}
    if shards is not None:
        weights = [f for f in weights if f.path in shards]
    elif index in names:
        # Before the index is read: shards by their usual name, never a consolidated copy.
        weights = [f for f in weights if not f.path.startswith("consolidated")]
    wanted = {f.path for f in weights} | {n for n in SMALL_FILES if n in names}
    if index in names:
        wanted.add(index)
    if trust_remote_code:
        wanted |= {f.path for f in top if f.path.endswith(".py")}
    chosen = tuple(f for f in files if f.path in wanted)
    skipped = tuple(f for f in files if f.path not in wanted)
    return Selection(files=chosen, skipped=skipped, weights_format=fmt)


def download_order(selection: Selection) -> list[RepoFile]:
    """Index first, then weights, then config and tokenizer: a folder that has config.json and
    an index but misses shards is visibly incomplete (see `weights_complete`)."""

    def rank(f: RepoFile) -> int:
        if f.path == selection.index:
            return 0
        if f.path.endswith((".safetensors", ".bin")):
            return 1
        return 2 if f.path != "config.json" else 3

    return sorted(selection.files, key=lambda f: (rank(f), f.path))


def human_bytes(n: int) -> str:
    """1.5 GB, 320 MB, 12 kB: decimal units, as disk tools and the hub's pages show sizes."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"
