"""``mlxlama.lock``: the commit and files each manifest model resolved to.

Written by ``apply`` and ``mlx-lama lock``, read by ``desired()``; checked in
beside the manifest so every machine pulls the same bytes. TOML, one table per
model, sorted, so diffs stay small. Writes are atomic (temp file + rename).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from mlx_lama.atomic import atomic_write_text
from mlx_lama.errors import ManifestError, MlxLamaError, Problem
from mlx_lama.paths import LOCK_NAME
from mlx_lama.schema.manifest import Manifest

LOCK_VERSION = 1


class LockMismatchError(MlxLamaError):
    """``--locked`` was asked for and the lock file is out of date."""


_HEADER = (
    "# mlxlama.lock: written by mlx-lama (`mlx-lama lock`, `mlx-lama apply`); do not edit.\n"
    "# Check it in beside mlxlama.toml so every machine gets the same model files.\n"
)


@dataclass(frozen=True, slots=True)
class LockedModel:
    """One model's resolution: repo and requested revision -> commit and files."""

    name: str
    repo: str
    revision: str
    commit: str
    files: tuple[tuple[str, int], ...]  # (path, size), sorted by path

    @property
    def size(self) -> int:
        return sum(size for _path, size in self.files)


@dataclass(frozen=True, slots=True)
class Lock:
    """All locked models, sorted by name."""

    models: tuple[LockedModel, ...] = ()

    def get(self, name: str) -> LockedModel | None:
        return next((m for m in self.models if m.name == name), None)

    def with_models(
        self, updates: Iterable[LockedModel], keep: Iterable[str] | None = None
    ) -> Lock:
        """A new lock with ``updates`` replacing same-named entries; when ``keep``
        is given, entries whose name is not in it are dropped."""
        merged: dict[str, LockedModel] = {m.name: m for m in self.models}
        merged.update({m.name: m for m in updates})
        if keep is not None:
            wanted = set(keep)
            merged = {name: m for name, m in merged.items() if name in wanted}
        return Lock(tuple(merged[name] for name in sorted(merged)))


def lock_path_for(manifest_path: Path) -> Path:
    """The lock file that belongs to ``manifest_path`` (beside it)."""
    return manifest_path.with_name(LOCK_NAME)


def read_lock(path: Path) -> Lock:
    """Read a lock file; a missing file is an empty lock. Raises ManifestError if damaged."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Lock()
    try:
        data = tomllib.loads(text)
        return _from_data(data)
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        problem = Problem(
            str(path), 1, 1, "", f"the lock file is damaged: {exc}",
            "delete it and run `mlx-lama lock` to write it again",
        )  # fmt: skip
        raise ManifestError(path, [problem]) from None


def write_lock(path: Path, lock: Lock) -> None:
    """Write ``lock`` to ``path`` atomically."""
    atomic_write_text(path, render_lock(lock))


def save_lock(path: Path, lock: Lock) -> None:
    """Write ``lock`` only if its text changes, and never create an empty lock file."""
    exists = path.exists()
    if not exists and not lock.models:
        return  # nothing to lock yet: don't litter a folder with an empty lock
    current = path.read_text(encoding="utf-8") if exists else None
    if current != render_lock(lock):
        write_lock(path, lock)


def lockable_names(manifest: Manifest) -> list[str]:
    """The manifest models the lock covers: those with a ``repo``. Pure."""
    return [name for name, entry in manifest.models.items() if entry.repo is not None]


def render_lock(lock: Lock) -> str:
    """The lock as TOML text. Pure and deterministic."""
    out = [_HEADER, f"version = {LOCK_VERSION}\n"]
    for model in lock.models:
        out.append(f"\n[models.{_quote(model.name)}]\n")
        out.append(f"repo = {_quote(model.repo)}\n")
        out.append(f"revision = {_quote(model.revision)}\n")
        out.append(f"commit = {_quote(model.commit)}\n")
        out.append(f"size = {model.size}\n")
        out.append(f"[models.{_quote(model.name)}.files]\n")
        out.extend(f"{_quote(name)} = {size}\n" for name, size in model.files)
    return "".join(out)


def lock_mismatches(manifest: Manifest, lock: Lock) -> list[str]:
    """Why ``lock`` does not match ``manifest`` (empty when it does). Pure."""
    problems = []
    for name, entry in sorted(manifest.models.items()):
        if entry.repo is None:
            continue
        locked = lock.get(name)
        revision = entry.revision or "main"
        if locked is None:
            problems.append(f"{name} is not locked")
        elif (locked.repo, locked.revision) != (entry.repo, revision):
            problems.append(
                f"{name} is locked to {locked.repo}@{locked.revision}, "
                f"the manifest asks for {entry.repo}@{revision}"
            )
    wanted = set(lockable_names(manifest))
    problems.extend(
        f"{m.name} is locked but not in the manifest" for m in lock.models if m.name not in wanted
    )
    return problems


def check_lock_matches(manifest: Manifest, lock: Lock, path: Path) -> None:
    """Raise LockMismatchError unless ``lock`` matches ``manifest`` (``apply --locked``)."""
    problems = lock_mismatches(manifest, lock)
    if problems:
        raise LockMismatchError(
            f"{path} does not match the manifest: " + "; ".join(problems),
            hint="run `mlx-lama lock` to update it, or drop --locked",
        )


def _from_data(data: Mapping[str, object]) -> Lock:
    version = data.get("version", LOCK_VERSION)
    if version != LOCK_VERSION:
        raise ValueError(f"lock version {version} is not supported (expected {LOCK_VERSION})")
    models_data = data.get("models", {})
    if not isinstance(models_data, dict):
        raise TypeError("[models] must be a table")
    models = []
    for name, entry in models_data.items():
        files = entry["files"]
        models.append(
            LockedModel(
                name=name,
                repo=str(entry["repo"]),
                revision=str(entry["revision"]),
                commit=str(entry["commit"]),
                files=tuple(sorted((str(k), int(v)) for k, v in files.items())),
            )
        )
    return Lock(tuple(sorted(models, key=lambda m: m.name)))


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
