"""What mlx-lama itself pulled: ``$MLX_LAMA_HOME/pulled.json``.

The Hugging Face cache is shared with every HF tool, so ``--prune`` may only
remove repos recorded here. Written by ``pull_model`` when it actually
downloads, read by ``observe``. A damaged file never raises: what can be read
is returned with a warning, so pruning can only ever remove less.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from mlx_lama import paths
from mlx_lama.atomic import atomic_write_text

PULLED_FILE_NAME = "pulled.json"

logger = logging.getLogger(__name__)


_pulled_lock = threading.Lock()


def pulled_file() -> Path:
    """``$MLX_LAMA_HOME/pulled.json``: the repos mlx-lama itself downloaded."""
    return paths.home() / PULLED_FILE_NAME


def read_pulled() -> frozenset[str]:
    """The repo ids in ``pulled.json``; whatever is damaged is left out (see below)."""
    return frozenset(read_pulled_checked()[0])


def read_pulled_checked() -> tuple[dict[str, tuple[str, ...]], tuple[str, ...]]:
    """Each repo in ``pulled.json`` with the projects (manifest keys) that pulled it,
    and warnings, shaped like ``scan_cache``'s result.

    An entry written before projects were recorded has no projects: it belongs
    to none, so any project's ``--prune`` may remove it once nothing claims it.
    A missing file is an empty record. A damaged one never raises: the entries
    that can be read are returned (possibly none, so ``--prune`` removes less,
    never more) with one warning for ``observe`` to show.
    """
    repos, problem = _load_pulled()
    owners = {repo: _projects_of(entry) for repo, entry in repos.items()}
    if problem is None:
        return owners, ()
    warning = (
        f"{pulled_file()} is damaged ({problem}); --prune only removes the models it still "
        "lists. Delete the file to start a fresh record"
    )
    return owners, (warning,)


def record_pulled(repo: str, *, project: str = "", now: float | None = None) -> None:
    """Note that mlx-lama downloaded ``repo`` for ``project`` (a manifest key; kept
    with the projects that pulled it before). Keeps ``first_pulled``, moves
    ``last_pulled``.

    Atomic, and safe from several threads; a damaged file is rewritten with
    the entries that could still be read.
    """
    stamp = int(now if now is not None else time.time())
    with _pulled_lock:
        repos, problem = _load_pulled()
        if problem is not None:
            logger.warning(
                "%s is damaged (%s); rewriting what could be read", pulled_file(), problem
            )
        entry = repos.get(repo) or {}
        first = entry.get("first_pulled")
        owners = sorted({*_projects_of(entry), project} - {""})
        repos[repo] = {
            "first_pulled": first if isinstance(first, int | float) else stamp,
            "last_pulled": stamp,
            **({"projects": owners} if owners else {}),
        }
        _save_pulled(repos)


def forget_pulled(repo: str) -> None:
    """Drop ``repo`` from ``pulled.json`` (after it was removed). No-op if absent."""
    with _pulled_lock:
        repos, problem = _load_pulled()
        if repo in repos or problem is not None:
            repos.pop(repo, None)
            _save_pulled(repos)


def _load_pulled() -> tuple[dict[str, dict[str, Any]], str | None]:
    """The readable entries of ``pulled.json`` and what was wrong with the rest."""
    try:
        text = pulled_file().read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, None
    except (OSError, UnicodeDecodeError) as exc:
        return {}, f"unreadable: {exc}"
    try:
        data = json.loads(text)
    except ValueError as exc:
        return {}, f"not JSON: {exc}"
    listed = data.get("repos") if isinstance(data, dict) else None
    if not isinstance(listed, dict):
        return {}, 'no "repos" table'
    repos = {k: v for k, v in listed.items() if _looks_like_repo_id(k) and isinstance(v, dict)}
    bad = sorted(str(k) for k in listed if k not in repos)
    problem = f"unreadable entries: {', '.join(bad)}" if bad else None
    return repos, problem


def _projects_of(entry: dict[str, Any]) -> tuple[str, ...]:
    listed = entry.get("projects")
    if not isinstance(listed, list):
        return ()
    return tuple(sorted({p for p in listed if isinstance(p, str) and p}))


def _save_pulled(repos: dict[str, dict[str, Any]]) -> None:
    data = {"repos": {repo: repos[repo] for repo in sorted(repos)}}
    atomic_write_text(pulled_file(), json.dumps(data, indent=2) + "\n")


def _looks_like_repo_id(text: object) -> bool:
    # "org/name", or a legacy id without an org ("gpt2").
    return isinstance(text, str) and text.count("/") <= 1 and "" not in text.split("/")
