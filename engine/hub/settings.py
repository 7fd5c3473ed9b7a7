"""Where the hub is and whether ftui may reach it, read the way `huggingface_hub` reads them.

Read from the environment on each call, without importing `huggingface_hub` (it freezes its
settings when first imported; ftui's answers must match what a fresh process would do).
"""

from __future__ import annotations

import os

DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "on", "yes", "true"}


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline() -> bool:
    """`HF_HUB_OFFLINE` (or transformers' `TRANSFORMERS_OFFLINE`) is set."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in _TRUE


def model_page(repo_id: str) -> str:
    return f"{endpoint()}/{repo_id}"


def looks_like_repo_id(text: str) -> bool:
    """`org/name`: two non-empty parts of the characters the hub allows, not a path."""
    if text.startswith(("/", "./", "../", "~")) or text.count("/") != 1:
        return False
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
    parts = text.split("/")
    return all(p and set(p) <= allowed and not p.startswith(("-", ".")) for p in parts)


def token_source() -> str | None:
    """Where the token comes from (`HF_TOKEN` or the token file), never the token itself."""
    from engine.paths import hf_home

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(var):
            return var
    explicit = os.environ.get("HF_TOKEN_PATH")
    path = os.path.expanduser(explicit) if explicit else str(hf_home() / "token")
    try:
        if os.path.getsize(path) > 0:
            return f"the token file {path}"
    except OSError:
        pass
    return None
