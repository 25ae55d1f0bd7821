"""Which cached repos must stay, and why: the one rule every deletion asks.

A repo in the Hugging Face cache may be deleted (by ``rm``, ``apply --prune`` or
``/api/delete``) only when mlx-lama downloaded it and nothing claims it:

- no known project's manifest names it, and no other project's lock does (the
  current project's lock is left out: ``apply`` rewrites it from the manifest);
- no running server of any project was started from its files.

A project whose manifest or lock cannot be read claims everything, since what it
names cannot be known. :func:`gather` reads the files into a
:class:`~mlx_lama.orchestrator.state.Claims`, whose ``why_kept`` decides without
I/O, so ``make_plan`` can ask it too.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from pathlib import Path

from mlx_lama.orchestrator import projects
from mlx_lama.orchestrator.state import Claims, RunningServer
from mlx_lama.paths import LOCK_NAME


def gather(project: str, servers: Iterable[RunningServer]) -> Claims:
    """The claims of every known project and of the running servers of every other
    project, as seen from ``project`` (a project key). Its own lock does not count
    (``apply`` rewrites it), its manifest does; its own servers do not (``apply``
    stops the ones it no longer wants before it deletes anything)."""
    servers = [s for s in servers if s.project != project]
    repos: dict[str, str] = {}
    known, problem = projects.known_projects([project, *(s.record.manifest for s in servers)])
    blocked = None if problem is None else f"the record of projects is damaged: {problem}"
    for other in known:
        files = [other.manifest]
        if other.key != project:
            files.append(other.manifest.with_name(LOCK_NAME))
        for path in files:
            try:
                named = named_repos(path)
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                blocked = blocked or (
                    f"project {other.name}'s {path.name} cannot be read ({exc}), so nothing "
                    "it may name is deleted; fix that file and try again"
                )
                continue
            for repo in named:
                repos.setdefault(repo, f"project {other.name} ({other.key}) names it")
    for server in servers:
        used = server_repo(server)
        if server.alive and used is not None:
            owner = projects.project_name(server.project)
            repos.setdefault(
                used,
                f"server {server.name} of project {owner} (pid {server.record.pid}) uses it",
            )
    return Claims(repos, blocked)


def named_repos(path: Path) -> set[str]:
    """The ``repo`` of every ``[models.NAME]`` table in a manifest or lock file (a
    missing file names none). Read as plain TOML, so a manifest that no longer
    validates still protects what it names."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return set()
    models = tomllib.loads(text).get("models")
    if not isinstance(models, dict):
        return set()
    return {
        entry["repo"]
        for entry in models.values()
        if isinstance(entry, dict) and isinstance(entry.get("repo"), str)
    }


def server_repo(server: RunningServer) -> str | None:
    """The repo a server was started from, read from its snapshot folder
    (``models--org--name/snapshots/COMMIT``); None for a local folder."""
    model_path = server.record.spec.get("model_path")
    if not isinstance(model_path, str):
        return None
    parts = Path(model_path).parts
    if len(parts) < 3 or parts[-2] != "snapshots" or not parts[-3].startswith("models--"):
        return None
    return parts[-3].removeprefix("models--").replace("--", "/", 1)
