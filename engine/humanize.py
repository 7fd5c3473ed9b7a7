"""Numbers as people read them, shared by the engine's messages and the screens."""

from __future__ import annotations


def duration(seconds: float | None) -> str:
    """12s, 9m 20s, 1h 02m, 3d 4h; "?" when unknown, "∞" when it never ends."""
    if seconds is None:
        return "?"
    if seconds == float("inf"):
        return "∞"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"
