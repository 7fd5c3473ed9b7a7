"""Push a folder (an exported adapter or model, its model card included) to a hub repo."""

from __future__ import annotations

from pathlib import Path

from engine.errors import FtuiError
from engine.hub.errors import hub_errors, offline_error, require_hub
from engine.hub.settings import endpoint, looks_like_repo_id, model_page, offline, token_source


def check_push_target(repo_id: str) -> None:
    """What can be checked before exporting: the repo id, offline mode, a token."""
    if not looks_like_repo_id(repo_id):
        raise FtuiError(
            f"--push-to-hub {repo_id!r} is not a hub repo id",
            "name it as owner/name, e.g. --push-to-hub my-user/llama-3.1-8b-support",
        )
    if offline():
        raise offline_error(f"push to {repo_id}")
    if token_source() is None:
        raise FtuiError(
            f"pushing to {repo_id} needs a Hugging Face token with write access, and none is set",
            f"make one at {endpoint()}/settings/tokens, then `hf auth login` (or set HF_TOKEN)",
        )
    require_hub()


def push_folder(folder: Path, repo_id: str, *, private: bool = False, message: str = "") -> str:
    """Create `repo_id` if needed and upload `folder` into it as one commit; the repo's page.

    The token is the library's (HF_TOKEN or `hf auth login`'s file): ftui never reads it."""
    check_push_target(repo_id)
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint())
    with hub_errors(repo_id, "push"):
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            commit_message=message or f"Upload {folder.name} with ftui",
        )
    return model_page(repo_id)
