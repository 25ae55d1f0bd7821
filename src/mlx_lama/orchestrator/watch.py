"""Notice saves of the manifest and its lock, however the editor writes them.

Editors save in three ways: in place (``sed -i`` truncates and writes),
write-then-rename (vim, VS Code, JetBrains, ``os.replace``) and
delete-then-recreate. A watch on the file itself goes silent after the first
rename (the watched inode is gone), so this watches the *folder* holding the
manifest (not recursively) and keeps only events for the two file names.

A burst of events (one save is often three or four) is gathered until the
folder has been quiet for the ``watch_step`` timing; each burst is one notification. What
changed is left to the caller, which compares :func:`fingerprint` values so a
save that rewrote the same bytes (or an edit the daemon made and already
applied) reconciles nothing. After ``watch_idle`` without events the watch also
yields an empty set, so the caller compares fingerprints then too: a save made
after the caller's last look but before the watch was in place (or an event
the platform dropped) is caught within that time.

Used by the daemon (:mod:`mlx_lama.orchestrator.supervisor`) and ``mlx-lama apply
--watch``. Built on watchfiles (inotify on Linux, FSEvents on macOS).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import watchfiles

from mlx_lama.schema.lockfile import lock_path_for
from mlx_lama.timings import timings

Fingerprint = tuple[str | None, str | None]


def _pace() -> tuple[int, int, int]:
    """watchfiles' debounce, step and timeout (ms) from the ``watch_*`` timings."""
    pace = timings()
    return (
        round(pace.watch_debounce * 1000),
        round(pace.watch_step * 1000),
        max(1, round(pace.watch_idle * 1000)),
    )


def watched_files(manifest: Path) -> tuple[Path, Path]:
    """The manifest and its lock file (``mlxlama.lock`` beside it)."""
    return manifest, lock_path_for(manifest)


def fingerprint(manifest: Path) -> Fingerprint:
    """Digests of the manifest's and the lock's bytes (None for a missing file)."""
    return _digest(manifest), _digest(lock_path_for(manifest))


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class _Filter(watchfiles.DefaultFilter):
    def __init__(self, names: set[str]) -> None:
        super().__init__()
        self._names = names

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        return Path(path).name in self._names


def _target(manifest: Path) -> tuple[Path, _Filter]:
    files = watched_files(manifest.absolute())
    return files[0].parent, _Filter({f.name for f in files})


async def watch_manifest(
    manifest: Path, *, stop: asyncio.Event | None = None
) -> AsyncIterator[set[Path]]:
    """Yield the changed paths once per burst of saves to ``manifest`` or its lock
    (an empty set after ``watch_idle`` without any), until ``stop`` is set."""
    folder, keep = _target(manifest)
    debounce, step, idle = _pace()
    async for changes in watchfiles.awatch(
        folder,
        watch_filter=keep,
        debounce=debounce,
        step=step,
        rust_timeout=idle,
        stop_event=stop,
        yield_on_timeout=True,
        recursive=False,
    ):
        yield {Path(path) for _, path in changes}


def watch_manifest_blocking(manifest: Path) -> Iterator[set[Path]]:
    """:func:`watch_manifest` for synchronous callers (``apply --watch``); Ctrl-C ends it."""
    folder, keep = _target(manifest)
    debounce, step, idle = _pace()
    for changes in watchfiles.watch(
        folder,
        watch_filter=keep,
        debounce=debounce,
        step=step,
        rust_timeout=idle,
        yield_on_timeout=True,
        recursive=False,
        raise_interrupt=False,
    ):
        yield {Path(path) for _, path in changes}
