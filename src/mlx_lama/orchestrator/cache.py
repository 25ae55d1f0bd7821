"""The Hugging Face cache as mlx-lama sees it: which model repos and snapshots are on disk.

``observe()`` calls :func:`scan_cache` for one snapshot of the cache and the
planner asks :func:`is_complete` whether a locked commit is fully there;
``apply`` calls :func:`remove_repo` for a planned ``remove``.

:func:`scan_cache` reads the documented cache layout itself
(``models--org--name/{blobs,refs,snapshots}``) instead of calling
``huggingface_hub.scan_cache_dir``: importing that costs about 0.2 s (it pulls
in the HTTP client), which ``mlx-lama list`` and ``plan`` cannot afford. The
two agree on a healthy cache (``tests/test_cache.py`` checks). Unlike
``scan_cache_dir``, one damaged entry costs only that entry, not the whole
repo: a broken link drops one file, a dangling ref drops one ref, and each
becomes a warning. Only model repos are read; datasets, spaces and anything
else in the cache belong to other tools and are ignored.

Nothing here downloads, and nothing but :func:`remove_repo` writes.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mlx_lama import paths
from mlx_lama.errors import MlxLamaError
from mlx_lama.orchestrator.state import (
    CachedRepo,
    CachedRevision,
    Files,
    files_present,
    repo_folder_name,
)

logger = logging.getLogger(__name__)

_MODEL_PREFIX = "models--"
_INCOMPLETE_SUFFIX = ".incomplete"
_IGNORED_NAMES = frozenset({".DS_Store"})  # OS litter, as scan_cache_dir skips it


class CacheError(MlxLamaError):
    """A cache operation asked for something the cache does not hold, or failed."""


def scan_cache(
    cache_dir: Path | None = None,
) -> tuple[tuple[CachedRepo, ...], tuple[str, ...]]:
    """The model repos in the Hugging Face cache, sorted by repo id, and warnings.

    ``cache_dir`` defaults to the hub cache huggingface_hub uses. A missing
    cache folder is an empty cache, not a warning. Never raises on a damaged
    cache: whatever cannot be read becomes a warning and the scan goes on.
    """
    cache = _cache_root(cache_dir)
    try:
        entries = sorted(os.scandir(cache), key=lambda e: e.name)
    except FileNotFoundError:
        return (), ()
    except OSError as exc:
        return (), (f"cannot read the Hugging Face cache at {cache}: {exc}",)
    repos: list[CachedRepo] = []
    warnings: list[str] = []
    for entry in entries:
        if not entry.name.startswith(_MODEL_PREFIX):
            continue  # .locks, CACHEDIR.TAG, datasets--*, spaces--*: not ours to report
        scan = _RepoScan(Path(entry.path))
        try:
            repo = scan.run()
        except OSError as exc:
            warnings.append(f"cannot read cached repo {entry.path}: {exc}")
            continue
        warnings.extend(scan.warnings)
        if repo is not None:
            repos.append(repo)
    repos.sort(key=lambda r: r.repo_id)
    return tuple(repos), tuple(warnings)


def is_complete(repo: CachedRepo | None, commit: str, files: Files) -> bool:
    """Whether ``repo`` holds a snapshot of ``commit`` with every file at its expected size.

    A download interrupted part-way (Ctrl-C, a dropped connection, a killed
    process) links a file into the snapshot only once its blob is whole, so
    it shows up here as missing files and is never taken for complete. An
    empty ``files`` (nothing locked yet) is never complete. Pure.
    """
    if repo is None or not files:
        return False
    revision = repo.revision(commit)
    return revision is not None and files_present(revision.files, files)


def remove_repo(repo_id: str, cache_dir: Path | None = None) -> int:
    """Delete ``repo_id`` (every revision, blob, ref and partial download) from the cache.

    Returns the bytes freed. Deletes nothing outside the repo's own folder
    ``models--org--name`` (and its download locks): the cache keeps blobs per
    repo, so nothing else refers to them. (huggingface_hub's
    ``delete_revisions`` is not used: it takes a commit hash from whichever repo
    it meets first, and two repos with the same files have the same hashes.)
    Raises :class:`CacheError` if the repo is not cached or cannot be deleted.
    """
    cache = _cache_root(cache_dir)
    folder = _repo_path(cache, repo_id)
    if folder.is_symlink() or not folder.is_dir():
        raise CacheError(
            f"model repo '{repo_id}' is not in the Hugging Face cache at {cache}",
            hint="`mlx-lama list` shows the cached models",
        )
    freed = bytes_in(folder)
    shutil.rmtree(folder, ignore_errors=True)
    if folder.exists():
        raise CacheError(
            f"could not delete {folder} completely",
            hint="check the folder's permissions, then run the command again",
        )
    shutil.rmtree(cache / ".locks" / folder.name, ignore_errors=True)
    logger.info("removed %s from the cache (%d bytes)", repo_id, freed)
    return freed


# -- scanning ------------------------------------------------------------------


def _cache_root(cache_dir: Path | None) -> Path:
    # Resolved like scan_cache_dir does, so paths compare equal with its.
    return (cache_dir if cache_dir is not None else paths.hf_hub_cache()).expanduser().resolve()


def _repo_path(cache: Path, repo_id: str) -> Path:
    parts = repo_id.split("/")
    if not repo_id or any(p in ("", ".", "..") or "\\" in p for p in parts):
        raise CacheError(
            f"'{repo_id}' is not a Hugging Face repo id",
            hint="use the form org/name, as `mlx-lama list` shows it",
        )
    return cache / repo_folder_name(repo_id)


@dataclass(slots=True)
class _RepoScan:
    """Reads one ``models--org--name`` folder; collects warnings instead of raising."""

    path: Path
    warnings: list[str] = field(default_factory=list)
    _blob_stats: dict[str, os.stat_result] = field(default_factory=dict)

    def run(self) -> CachedRepo | None:
        repo_id = self.path.name.removeprefix(_MODEL_PREFIX).replace("--", "/")
        if not self.path.is_dir():
            self.warnings.append(f"not a cached repo (not a folder): {self.path}")
            return None
        if not repo_id:
            self.warnings.append(f"not a cached repo (no repo id in its name): {self.path}")
            return None
        snapshots = self.path / "snapshots"
        if not snapshots.is_dir():
            self.warnings.append(f"cached repo {repo_id} has no snapshots folder: {snapshots}")
            return None
        refs = self._read_refs(repo_id)
        revisions = []
        for entry in sorted(os.scandir(snapshots), key=lambda e: e.name):
            if entry.name in _IGNORED_NAMES:
                continue
            if not entry.is_dir(follow_symlinks=False):
                self.warnings.append(f"cached repo {repo_id}: not a snapshot folder: {entry.path}")
                continue
            revisions.append(self._read_revision(repo_id, Path(entry.path), refs))
        known = {r.commit for r in revisions}
        for commit, names in sorted(refs.items()):
            if commit not in known:
                self.warnings.append(
                    f"cached repo {repo_id}: ref {', '.join(sorted(names))} points to "
                    f"commit {commit!r}, which has no snapshot"
                )
        if self._blob_stats:
            size = sum(s.st_size for s in self._blob_stats.values())
            last_modified = max(s.st_mtime for s in self._blob_stats.values())
        else:
            size, last_modified = 0, self.path.stat().st_mtime
        return CachedRepo(
            repo_id=repo_id,
            size_on_disk=size,
            revisions=tuple(revisions),
            last_modified=last_modified,
            path=self.path,
            incomplete=self._has_partial_downloads(),
        )

    def _read_refs(self, repo_id: str) -> dict[str, set[str]]:
        """commit -> ref names (``main``, ``refs/pr/1``), as read from ``refs/``."""
        refs_dir = self.path / "refs"
        found: dict[str, set[str]] = {}
        if not refs_dir.exists():
            return found
        if not refs_dir.is_dir():
            self.warnings.append(f"cached repo {repo_id}: refs is not a folder: {refs_dir}")
            return found
        for root, _dirs, names in os.walk(refs_dir):
            for name in names:
                if name in _IGNORED_NAMES:
                    continue
                ref_path = Path(root, name)
                try:
                    commit = ref_path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    self.warnings.append(f"cached repo {repo_id}: unreadable ref {ref_path}: {exc}")
                    continue
                found.setdefault(commit, set()).add(ref_path.relative_to(refs_dir).as_posix())
        return found

    def _read_revision(
        self, repo_id: str, snapshot: Path, refs: dict[str, set[str]]
    ) -> CachedRevision:
        files: list[tuple[str, int]] = []
        blobs: dict[str, os.stat_result] = {}
        for rel, file_path, is_link in _snapshot_entries(str(snapshot)):
            # One symlink hop, like scan_cache_dir: the repo's blob, even if that
            # blob links on into huggingface_hub's shared store.
            if is_link:
                target = os.readlink(file_path)  # noqa: PTH115 (str paths: see _snapshot_entries)
                blob = os.path.normpath(os.path.join(os.path.dirname(file_path), target))  # noqa: PTH118, PTH120
            else:
                blob = file_path
            blob_stat = self._blob_stats.get(blob)
            if blob_stat is None:
                try:
                    blob_stat = os.stat(blob)  # noqa: PTH116
                except OSError:
                    self.warnings.append(
                        f"cached repo {repo_id}: blob missing for {file_path} (broken link)"
                    )
                    continue
                self._blob_stats[blob] = blob_stat
            blobs[blob] = blob_stat
            files.append((rel, blob_stat.st_size))
        if blobs:
            last_modified = max(s.st_mtime for s in blobs.values())
        else:
            last_modified = snapshot.stat().st_mtime
        return CachedRevision(
            commit=snapshot.name,
            refs=tuple(sorted(refs.get(snapshot.name, ()))),
            size_on_disk=sum(s.st_size for s in blobs.values()),
            files=tuple(sorted(files)),
            snapshot_path=snapshot,
            last_modified=last_modified,
        )

    def _has_partial_downloads(self) -> bool:
        try:
            with os.scandir(self.path / "blobs") as entries:
                return any(e.name.endswith(_INCOMPLETE_SUFFIX) for e in entries)
        except OSError:
            return False


def _snapshot_entries(top: str, prefix: str = "") -> Iterator[tuple[str, str, bool]]:
    """(path in the repo, path on disk, is a link) for every file under a snapshot.

    Plain strings and ``os.scandir``: on Python 3.11, building ``Path`` objects
    took most of the scan time. Links to folders are not files and are skipped.
    """
    try:
        with os.scandir(top) as entries:
            found = list(entries)
    except OSError:
        return
    for entry in found:
        if entry.is_dir(follow_symlinks=False):
            yield from _snapshot_entries(entry.path, f"{prefix}{entry.name}/")
        elif entry.is_symlink() and entry.is_dir():
            continue
        else:
            yield f"{prefix}{entry.name}", entry.path, entry.is_symlink()


# -- removal -------------------------------------------------------------------


def bytes_in(folder: Path, *, follow_links: bool = False) -> int:
    """Bytes of the regular files under ``folder``. Links are not followed unless
    ``follow_links`` (a snapshot's files are links to its blobs); broken ones count 0."""
    total = 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            try:
                path = Path(root, name)
                info = path.stat() if follow_links else path.lstat()
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
    return total
