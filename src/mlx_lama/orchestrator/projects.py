"""Projects: which manifest owns a server or a pulled model, and which projects exist.

A project is a manifest file, identified by its real path (symlinks and ``..``
resolved), so two commands that reach the same file by different routes agree.
It is shown by a short name: its folder's name, or ``global`` for the global
manifest, as docker compose names a project after its folder.

Projects are remembered in ``$MLX_LAMA_HOME/projects.json`` when they apply or
serve; a remembered project whose manifest is gone is forgotten on the next
read. :func:`known_projects` adds the manifest of every run record, so servers
started before projects were recorded still count.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mlx_lama import paths
from mlx_lama.atomic import atomic_write_text

PROJECTS_FILE_NAME = "projects.json"

log = logging.getLogger(__name__)
_lock = threading.Lock()


def project_key(manifest: str | os.PathLike[str]) -> str:
    """The identity of the project whose manifest is ``manifest``: its real, absolute
    path. ``""`` (a record that names no manifest) stays ``""``."""
    text = os.fspath(manifest)
    if not text:
        return ""
    return os.path.realpath(Path(text).expanduser())  # never raises, even on a link loop


def project_name(key: str) -> str:
    """The short name a person sees for project ``key``: its folder's name, or
    ``global`` for the global manifest; ``-`` for a record that names none."""
    if not key:
        return "-"
    if key == project_key(paths.global_manifest()):
        return "global"
    return Path(key).parent.name or key


@dataclass(frozen=True, slots=True)
class Project:
    """A project that still has its manifest on disk."""

    key: str  # the manifest's real path

    @property
    def name(self) -> str:
        return project_name(self.key)

    @property
    def manifest(self) -> Path:
        return Path(self.key)


def projects_file() -> Path:
    """``$MLX_LAMA_HOME/projects.json``: the projects that applied or served here."""
    return paths.home() / PROJECTS_FILE_NAME


def remember(manifest: str | os.PathLike[str], *, now: float | None = None) -> None:
    """Record that the project of ``manifest`` applied or served (so other projects'
    prunes keep what it names), dropping recorded projects whose manifest is gone.
    Never raises: a project that cannot be recorded is logged, and its run records
    still make it known while its servers run."""
    key = project_key(manifest)
    if not key:
        return
    with _lock:
        recorded, problem = _load()
        if problem is not None:
            log.warning("not recording project %s: %s", key, problem)
            return
        try:
            known = {k: v for k, v in recorded.items() if Path(k).is_file()}
            known[key] = {"last_used": int(now if now is not None else time.time())}
            text = json.dumps({"projects": dict(sorted(known.items()))}, indent=2) + "\n"
            atomic_write_text(projects_file(), text)
        except OSError as exc:
            log.warning("cannot record project %s in %s: %s", key, projects_file(), exc)


def known_projects(record_manifests: Iterable[str] = ()) -> tuple[tuple[Project, ...], str | None]:
    """Every project whose manifest still exists (the remembered ones and those named
    by ``record_manifests``, the run records'), sorted by key; and what is wrong with
    ``projects.json`` when it cannot be read (then some projects may be missing)."""
    recorded, problem = _load()
    keys = set(recorded) | {project_key(m) for m in record_manifests}
    return tuple(Project(k) for k in sorted(keys) if k and Path(k).is_file()), problem


def _load() -> tuple[dict[str, dict[str, object]], str | None]:
    """The recorded projects, and what is wrong with the file (None: nothing)."""
    path = projects_file()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return {}, f"{path} cannot be read ({exc}); delete it once you have checked it"
    listed = data.get("projects") if isinstance(data, dict) else None
    if not isinstance(listed, dict) or not all(
        isinstance(k, str) and isinstance(v, dict) for k, v in listed.items()
    ):
        return {}, f'{path} is damaged (no "projects" table); delete it once you have checked it'
    return listed, None
