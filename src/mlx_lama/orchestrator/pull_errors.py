"""What went wrong with a pull, in words: :class:`PullError` and :func:`explain`.

Every huggingface_hub or network failure of a resolve or a download becomes a
PullError that names the repo, the revision (or the locked commit) and the
fix, never a raw library or HTTP error. The hub's error types are imported
inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import json

from mlx_lama.errors import MlxLamaError


class PullError(MlxLamaError):
    """A model could not be resolved or downloaded; the message names the repo and the fix."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        repo: str | None = None,
        revision: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.repo = repo
        self.revision = revision


def refuse_offline(repo: str, revision: str) -> None:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise PullError(
            f"cannot reach the Hugging Face Hub for {repo}@{revision}: HF_HUB_OFFLINE is set",
            hint="unset HF_HUB_OFFLINE to download",
            repo=repo,
            revision=revision,
        )


def explain(
    exc: BaseException, *, repo: str, revision: str, name: str, commit: str | None = None
) -> PullError:
    """A PullError that says what went wrong with ``repo@revision`` and what to do.

    ``commit`` is given when downloading a locked commit (errors then point at the lock).
    """
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo}@{revision}" + (f" (commit {commit[:12]})" if commit else "")
    table = f"[models.{quote_name(name)}]"

    def error(message: str, hint: str) -> PullError:
        return PullError(message, hint=hint, repo=repo, revision=revision)

    if isinstance(exc, GatedRepoError):
        return error(
            f"model repo '{repo}' is gated: you must accept its terms to download it",
            f"accept them on {constants.ENDPOINT}/{repo}, then log in with "
            "`hf auth login` or set HF_TOKEN",
        )
    if isinstance(exc, RepositoryNotFoundError):
        return error(
            f"model repo '{repo}' was not found on the Hugging Face Hub (or it is private)",
            f"check the repo id on huggingface.co, or fix {table} repo in mlxlama.toml; "
            "for a private repo log in with `hf auth login`",
        )
    if isinstance(exc, RevisionNotFoundError) and commit:
        return error(
            f"commit {commit} locked for {repo}@{revision} is no longer on the Hub",
            f"run `mlx-lama lock` to resolve {table} again",
        )
    if isinstance(exc, RevisionNotFoundError):
        return error(
            f"revision '{revision}' of model repo '{repo}' was not found on the Hub",
            f"check the branch, tag or commit on huggingface.co/{repo}, "
            f"or fix {table} revision in mlxlama.toml",
        )
    if isinstance(exc, RemoteEntryNotFoundError):
        return error(
            f"a file locked for {where} is no longer on the Hub",
            f"run `mlx-lama lock` to resolve {table} again",
        )
    if isinstance(exc, OfflineModeIsEnabled) or constants.HF_HUB_OFFLINE:
        return error(
            f"cannot reach the Hugging Face Hub for {where}: HF_HUB_OFFLINE is set",
            "unset HF_HUB_OFFLINE to download",
        )
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        return error(
            f"the Hugging Face Hub answered HTTP {status} for {where}",
            "try again later; for a private repo log in with `hf auth login`",
        )
    if _is_connection_error(exc) or isinstance(exc, LocalEntryNotFoundError):
        return error(
            f"could not reach the Hugging Face Hub at {constants.ENDPOINT} for {where}",
            "check your network connection (and HF_ENDPOINT if you set it), then try again",
        )
    if isinstance(exc, ValueError):  # HFValidationError: a malformed repo id or revision
        return error(
            f"'{repo}' (revision '{revision}') is not a valid Hugging Face repo id: {exc}",
            f"use the form org/name, and fix {table} in mlxlama.toml",
        )
    if isinstance(exc, OSError):
        return error(
            f"could not write {where} to the Hugging Face cache: {exc}",
            "free some disk space or point HF_HUB_CACHE at a larger disk, then try again",
        )
    return error(
        f"downloading {where} failed: {type(exc).__name__}: {exc}",
        "try again; set MLX_LAMA_DEBUG=1 to see the full error",
    )


_TRANSPORT_ERRORS = frozenset(
    {"TransportError", "NetworkError", "ConnectError", "TimeoutException", "ReadError"}
)


def _is_connection_error(exc: BaseException) -> bool:
    """A network failure, whichever HTTP client huggingface_hub uses (httpx, httpx2, requests)."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    return any(cls.__name__ in _TRANSPORT_ERRORS for cls in type(exc).__mro__)


def quote_name(name: str) -> str:
    """A manifest model name as it appears in a TOML table header."""
    bare = name.replace("-", "").replace("_", "").isalnum()
    return name if bare else json.dumps(name)
