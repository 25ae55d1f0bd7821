"""Resolve manifest revisions to commits for ``mlx-lama lock``, without downloading.

Entries that already match the manifest are kept unless upgraded; the rest
ask the hub (``pull.resolve_revision``). Failures are collected per model so
one bad repo does not stop the others.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from mlx_lama.errors import MlxLamaError
from mlx_lama.orchestrator import pull
from mlx_lama.schema.lockfile import Lock, LockedModel, lockable_names
from mlx_lama.schema.manifest import Manifest


@dataclass(frozen=True, slots=True)
class LockChange:
    name: str
    before: LockedModel | None
    after: LockedModel | None  # None: resolving failed
    error: str = ""


def relock(
    manifest: Manifest, lock: Lock, *, upgrade: bool = False, only: Collection[str] = ()
) -> tuple[Lock, list[LockChange]]:
    """The updated lock and what changed. ``upgrade`` re-resolves the models in
    ``only`` (every model when ``only`` is empty) even if their entry matches."""
    unknown = sorted(set(only) - set(manifest.models))
    if unknown:
        raise MlxLamaError(
            f"not in the manifest: {', '.join(unknown)}",
            hint="name models as they appear under [models] in mlxlama.toml",
        )
    updates: list[LockedModel] = []
    changes: list[LockChange] = []
    for name, entry in sorted(manifest.models.items()):
        if entry.repo is None:
            continue
        revision = entry.revision or "main"
        current = lock.get(name)
        matches = current is not None and (current.repo, current.revision) == (entry.repo, revision)
        wanted = upgrade and (not only or name in only)
        if matches and not wanted:
            continue
        try:
            resolved = pull.resolve_revision(entry.repo, revision, name=name)
        except MlxLamaError as error:
            changes.append(LockChange(name, current, None, str(error)))
            continue
        updates.append(resolved)
        if resolved != current:
            changes.append(LockChange(name, current, resolved))
    return lock.with_models(updates, keep=lockable_names(manifest)), changes
