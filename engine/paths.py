"""Where ftui keeps its data: `$FTUI_HOME` (runs, corrections), and where Hugging Face caches."""

from __future__ import annotations

import os
from pathlib import Path


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
