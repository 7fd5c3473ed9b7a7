"""Errors a user can cause: one clear message, the fix, and an exit code."""

from __future__ import annotations


class FtuiError(Exception):
    """A problem the user can fix. The CLI prints it without a traceback."""

    exit_code = 2

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return self.message if not self.fix else f"{self.message}\n  fix: {self.fix}"


class UnknownModelError(FtuiError):
    """A model name that is neither a directory, a profile nor in the local HF cache."""

    def __init__(self, name: str, suggestions: list[str]) -> None:
        hint = (
            "did you mean: " + ", ".join(suggestions) + "?"
            if suggestions
            else "run `ftui models` to list the known models"
        )
        super().__init__(
            f"unknown model {name!r}: not a local directory with config.json, not a built-in "
            f"profile, and not in the local Hugging Face cache",
            f"{hint} (or pass a local directory that holds the model's config.json)",
        )
        self.name = name
        self.suggestions = suggestions


class SimulateSpecError(FtuiError):
    """A `--simulate` spec that does not name a GPU profile."""
