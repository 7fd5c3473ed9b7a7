"""Where ftui keeps its data: `$FTUI_HOME` (runs, corrections), and where Hugging Face caches."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def source_root() -> Path:
    """The folder that holds this ftui's `engine` package (the repository, or site-packages)."""
    return Path(__file__).resolve().parent.parent


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a process ftui starts (supervisor, trainer, chat worker, server,
    evaluation): unbuffered output, and this same ftui first on the import path, installed or
    not."""
    out = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra or {})}
    current = out.get("PYTHONPATH")
    out["PYTHONPATH"] = str(source_root()) + (os.pathsep + current if current else "")
    return out


def ftui_home() -> Path:
    """`$FTUI_HOME`, else `$XDG_DATA_HOME/ftui`, else `~/.local/share/ftui`."""
    explicit = os.environ.get("FTUI_HOME")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "ftui"


def ftui_cache() -> Path:
    """What ftui can rebuild at will (parameter counts of built models): `$FTUI_HOME/cache`."""
    return ftui_home() / "cache"


def runs_root() -> Path:
    return ftui_home() / "runs"


def existing_ancestor(path: Path) -> Path:
    """The nearest existing directory at or above `path` (for free-disk checks before mkdir)."""
    path = path.expanduser().absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def hf_home() -> Path:
    explicit = os.environ.get("HF_HOME")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface"


def hf_hub_cache() -> Path:
    """The hub cache directory, resolved the way huggingface_hub resolves it."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        value = os.environ.get(var)
        if value:
            return Path(value).expanduser()
    return hf_home() / "hub"


def hf_token_configured() -> bool:
    """Whether an HF token is available (env or token file). Never returns or prints the token."""
    if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"):
        return True
    token_path = os.environ.get("HF_TOKEN_PATH")
    path = Path(token_path).expanduser() if token_path else hf_home() / "token"
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False
