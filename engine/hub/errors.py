"""`huggingface_hub`'s exceptions as one clear FtuiError each: the problem and the fix."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from engine.errors import FtuiError, UnknownModelError
from engine.hub.settings import endpoint, model_page, token_source

OFFLINE_STILL_WORKS = (
    "offline, ftui still plans built-in profiles (`ftui models`), local model folders and "
    "models already in the Hugging Face cache"
)


class HubModelNotFoundError(UnknownModelError):
    """A repo id the hub does not know (or hides: private without a token)."""

    def __init__(self, repo_id: str, suggestions: list[str]) -> None:
        super().__init__(repo_id, suggestions)
        login = "" if token_source() else "; a private model needs `hf auth login` first"
        self.message = (
            f"unknown model {repo_id!r}: not a local directory, not a built-in profile, not in "
            f"the local Hugging Face cache, and not on {endpoint()}{login}"
        )
        self.args = (self.message,)


class HubUnreachableError(FtuiError):
    """No network, or HF_HUB_OFFLINE: the hub cannot be asked."""


class DownloadInterrupted(FtuiError):
    """Ctrl-C or a hang-up during a download: what is on disk is kept for the next call."""

    exit_code = 130


def require_hub() -> None:
    """`huggingface_hub` comes with the training stack; a light install may lack it."""
    try:
        import huggingface_hub  # noqa: F401
    except ImportError as exc:
        raise FtuiError(
            "talking to the Hugging Face hub needs the huggingface_hub package",
            "install the training stack (`pip install 'ftui[train]'`) or `pip install "
            "huggingface_hub`",
        ) from exc


def offline_error(what: str) -> HubUnreachableError:
    return HubUnreachableError(
        f"HF_HUB_OFFLINE is set: ftui cannot {what}",
        f"unset HF_HUB_OFFLINE to reach {endpoint()}; {OFFLINE_STILL_WORKS}",
    )


def _suggestions(repo_id: str) -> list[str]:
    from engine.models import suggest_models  # a shared sibling; imported late (it imports us)

    return suggest_models(repo_id)


def translate(exc: BaseException, repo_id: str, revision: str | None = None) -> FtuiError | None:
    """The FtuiError for a hub exception, or None when it is not one this module knows."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, GatedRepoError):
        who = (
            f"the token from {token_source()} has not been granted access"
            if token_source()
            else "you are not logged in"
        )
        return FtuiError(
            f"{repo_id} is a gated model: its authors grant access on request, and {who}",
            f"ask for access at {model_page(repo_id)}, then log in with `hf auth login` "
            "(or set HF_TOKEN) and run the command again",
        )
    if isinstance(exc, RevisionNotFoundError):
        return FtuiError(
            f"{repo_id} has no revision {revision!r} on {endpoint()}",
            f"pass a branch, tag or commit that exists ({model_page(repo_id)}/tree/main lists "
            "them), or leave --revision out for the default branch",
        )
    if isinstance(exc, RepositoryNotFoundError):
        return HubModelNotFoundError(repo_id, _suggestions(repo_id))
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status == 401:
            source = token_source() or "the request"
            return FtuiError(
                f"{endpoint()} refused the Hugging Face token from {source} (401: invalid or "
                "expired)",
                f"make a new token at {endpoint()}/settings/tokens and log in with "
                "`hf auth login` (or fix HF_TOKEN)",
            )
        if status == 403:
            return FtuiError(
                f"{endpoint()} refused access to {repo_id} (403): the token lacks the permission",
                f"use a token with {'write' if revision == 'push' else 'read'} access "
                f"({endpoint()}/settings/tokens), then `hf auth login`",
            )
        if status >= 500:
            return HubUnreachableError(
                f"{endpoint()} answered {status} for {repo_id}: the hub is having trouble",
                f"try again in a few minutes; {OFFLINE_STILL_WORKS}",
            )
    if isinstance(exc, OfflineModeIsEnabled):
        return offline_error(f"fetch {repo_id}")
    if isinstance(exc, (LocalEntryNotFoundError, ConnectionError)) or _is_transport_error(exc):
        return HubUnreachableError(
            f"cannot reach the Hugging Face hub at {endpoint()} to fetch {repo_id}",
            "check the network, or HF_ENDPOINT if you use a mirror; "
            f"{OFFLINE_STILL_WORKS} (HF_HUB_OFFLINE=1 skips the hub)",
        )
    return None


# The HTTP client's "could not talk to the server" classes, by name: huggingface_hub has used
# requests, httpx and httpx2 across versions, and ftui supports more than one of them.
_TRANSPORT_ERRORS = frozenset(
    {"TransportError", "ConnectError", "ConnectionError", "Timeout", "TimeoutException"}
)


def _is_transport_error(exc: BaseException) -> bool:
    return any(cls.__name__ in _TRANSPORT_ERRORS for cls in type(exc).__mro__)


@contextmanager
def hub_errors(repo_id: str, revision: str | None = None) -> Iterator[None]:
    """Turn the hub exceptions raised inside the block into FtuiErrors."""
    try:
        yield
    except FtuiError:
        raise
    except Exception as exc:
        error = translate(exc, repo_id, revision)
        if error is None:
            raise
        raise error from exc
