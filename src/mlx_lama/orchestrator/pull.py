"""Resolve a model revision on the Hub and download exactly the locked files.

``mlx-lama lock`` (and ``apply``, for models not locked yet) calls
:func:`resolve_revision` to turn ``repo@revision`` into a :class:`LockedModel`
(commit and file sizes, no download). ``apply`` calls :func:`pull_model` for
each planned ``pull``, in parallel threads, and records each download in
``pulled.json`` (``pulled.py``) so ``--prune`` leaves other tools' models alone.

Downloads go through the real ``huggingface_hub`` into its cache; nothing here
prints (progress goes to a callback) and every failure is a :class:`PullError`
that names the repo and the fix, never a raw huggingface_hub or HTTP error.
The hub client is imported inside the functions that use it, so importing this
module stays cheap.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import threading
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from mlx_lama import paths
from mlx_lama.atomic import atomic_write_text
from mlx_lama.orchestrator.pull_errors import PullError, explain, quote_name, refuse_offline
from mlx_lama.orchestrator.pulled import pulled_file, record_pulled
from mlx_lama.orchestrator.state import Files, repo_folder_name, snapshot_folder
from mlx_lama.schema.lockfile import LockedModel

logger = logging.getLogger(__name__)

# What mlx_lm itself downloads for a model (mlx_lm.utils._download): config,
# weights, tokenizer, chat template and custom code. README, images,
# .gitattributes and PyTorch/GGUF weights are left out.
MODEL_FILE_PATTERNS: tuple[str, ...] = (
    "*.json",
    "model*.safetensors",
    "*.py",
    "tokenizer.model",
    "*.tiktoken",
    "tiktoken.model",
    "*.txt",
    "*.jsonl",
    "*.jinja",
)

PROGRESS_INTERVAL = 0.1  # seconds between progress reports (at most ~10 a second)
# A partial download is only deleted when unwritten this long (and unlocked).
STALE_PARTIAL_AGE = 60.0

Progress = Callable[[int, int], None]


def matches_model_patterns(path: str) -> bool:
    """Whether a repo file is one a model needs (:data:`MODEL_FILE_PATTERNS`). Pure."""
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in MODEL_FILE_PATTERNS)


def resolve_revision(repo: str, revision: str, *, name: str) -> LockedModel:
    """Ask the Hub which commit ``repo@revision`` is and which model files it holds.

    One metadata request (model info with file sizes); nothing is downloaded.
    ``name`` is the manifest model name, used in the result and in hints.
    Raises :class:`PullError` for an unknown repo or revision, a gated repo,
    offline mode or an unreachable Hub.
    """
    refuse_offline(repo, revision)
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    except Exception as exc:  # every hub/HTTP failure becomes a PullError, classified
        raise explain(exc, repo=repo, revision=revision, name=name) from exc
    if not info.sha:
        raise PullError(
            f"the Hub did not say which commit {repo}@{revision} is",
            hint="try again; if it persists, pin a commit with `revision` in mlxlama.toml",
            repo=repo,
            revision=revision,
        )
    files: dict[str, int] = {}
    for sibling in info.siblings or ():
        if not matches_model_patterns(sibling.rfilename):
            continue
        size = sibling.size if sibling.size is not None else getattr(sibling.lfs, "size", None)
        if size is None:
            raise PullError(
                f"the Hub did not report the size of {sibling.rfilename} in {repo}@{revision}",
                hint="try again later",
                repo=repo,
                revision=revision,
            )
        files[sibling.rfilename] = int(size)
    if not files:
        raise PullError(
            f"{repo}@{revision} holds no model files ({', '.join(MODEL_FILE_PATTERNS[:2])}, ...)",
            hint=f"is it an MLX model? fix [models.{quote_name(name)}] repo in mlxlama.toml",
            repo=repo,
            revision=revision,
        )
    return LockedModel(
        name=name,
        repo=repo,
        revision=revision,
        commit=info.sha,
        files=tuple(sorted(files.items())),
    )


def fetch(
    repo: str,
    revision: str,
    *,
    name: str,
    cache_dir: Path,
    project: str,
    progress: Progress | None = None,
    locked: LockedModel | None = None,
) -> LockedModel:
    """Download model ``name`` (``repo@revision``) for ``project``: the commit and files
    ``locked`` names, else what the Hub resolves ``revision`` to now. Returns the
    lock entry. What ``apply`` and ``mlx-lama pull`` do for each model."""
    if locked is None:
        locked = resolve_revision(repo, revision, name=name)
    pull_model(locked, cache_dir=cache_dir, progress=progress, project=project)
    return locked


def pull_model(
    locked: LockedModel,
    *,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    project: str = "",
) -> Path:
    """Download exactly ``locked.files`` at ``locked.commit``; return the snapshot folder.

    Already-complete snapshots return at once without touching the network.
    Afterwards every file is checked against its locked size. ``progress`` is
    called with ``(done_bytes, total_bytes)``: non-decreasing, at most about
    ten times a second, from a helper thread while the download runs, and a
    last time with ``done == total`` from the calling thread. Safe to run for
    different repos in parallel threads. When it downloaded anything, the
    repo is recorded in ``pulled.json`` (:func:`record_pulled`) as pulled for
    ``project`` (a manifest key). Raises
    :class:`PullError`.
    """
    # Resolved as huggingface_hub resolves it, so both return paths below are the same.
    cache_root = (
        (cache_dir if cache_dir is not None else paths.hf_hub_cache()).expanduser().resolve()
    )
    repo_path = cache_root / repo_folder_name(locked.repo)
    snapshot = snapshot_folder(cache_root, locked.repo, locked.commit)
    total = locked.size
    if not locked.files:
        raise PullError(
            f"no files are locked for {locked.repo}@{locked.revision}",
            hint=f"run `mlx-lama lock` to resolve [models.{quote_name(locked.name)}] again",
            repo=locked.repo,
            revision=locked.revision,
        )
    if not file_problems(snapshot, locked.files):
        if progress is not None:
            progress(total, total)
        return snapshot
    refuse_offline(locked.repo, locked.revision)
    from huggingface_hub import snapshot_download

    started = time.time()
    watcher = _ProgressWatcher(repo_path / "blobs", snapshot, locked.files, progress)
    watcher.start()
    try:
        folder = snapshot_download(
            locked.repo,
            revision=locked.commit,
            allow_patterns=[_literal_pattern(path) for path, _size in locked.files],
            cache_dir=cache_root,
            tqdm_class=_silent_tqdm(),
        )
    except Exception as exc:  # every hub/HTTP/disk failure becomes a PullError
        raise explain(
            exc, repo=locked.repo, revision=locked.revision, name=locked.name, commit=locked.commit
        ) from exc
    finally:
        watcher.stop()
    snapshot = Path(folder)
    problems = file_problems(snapshot, locked.files)
    if problems:
        raise PullError(
            f"{locked.repo}@{locked.revision} (commit {locked.commit[:12]}) does not match "
            f"mlxlama.lock: {'; '.join(problems)}",
            hint=f"run `mlx-lama lock` to resolve [models.{quote_name(locked.name)}] again",
            repo=locked.repo,
            revision=locked.revision,
        )
    _write_ref(repo_path, locked.revision, locked.commit)
    _remove_stale_partials(repo_path, before=started - STALE_PARTIAL_AGE)
    try:
        record_pulled(locked.repo, project=project)
    except OSError as exc:  # only makes --prune remove less; not worth failing the pull
        logger.warning("could not record %s in %s: %s", locked.repo, pulled_file(), exc)
    if progress is not None:
        progress(total, total)
    return snapshot


# -- downloading ---------------------------------------------------------------


class _ProgressWatcher:
    """Reports download progress by watching this repo's blobs folder grow.

    Counts the locked files already in the snapshot, plus every blob (whole
    or ``*.incomplete``) that appears after the start, so it works whatever
    huggingface_hub does with its own progress bars.
    """

    def __init__(self, blobs: Path, snapshot: Path, files: Files, report: Progress | None) -> None:
        self._blobs = blobs
        self._report = report
        self._total = sum(size for _path, size in files)
        self._present = sum(size for path, size in files if _size_of(snapshot / path) == size)
        self._known = set(_blob_names(blobs))
        self._done = -1
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="mlx-lama-pull-progress", daemon=True
        )

    def start(self) -> None:
        if self._report is not None:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        assert self._report is not None
        while True:
            done = min(self._total, max(self._done, self._present + self._new_bytes()))
            if done != self._done:
                self._done = done
                try:
                    self._report(done, self._total)
                except Exception:
                    logger.exception("progress callback failed; no more progress reports")
                    return
            if self._stop.wait(PROGRESS_INTERVAL):
                return

    def _new_bytes(self) -> int:
        total = 0
        try:
            with os.scandir(self._blobs) as entries:
                for entry in entries:
                    if entry.name in self._known:
                        continue
                    # Gone meanwhile: renamed from .incomplete to its final name.
                    with contextlib.suppress(OSError):
                        total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            pass  # no blobs folder yet
        return total


def _blob_names(blobs: Path) -> list[str]:
    try:
        return [p.name for p in blobs.iterdir()]
    except OSError:
        return []


def _size_of(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def file_problems(snapshot: Path, files: Files) -> list[str]:
    """What is missing or the wrong size in ``snapshot``, as short phrases."""
    if not files:
        return ["no files are locked"]
    problems = []
    for path, size in files:
        actual = _size_of(snapshot / path)
        if actual is None:
            problems.append(f"{path} is missing")
        elif actual != size:
            problems.append(f"{path} is {actual} bytes, expected {size}")
    return problems


def _literal_pattern(path: str) -> str:
    """An fnmatch pattern matching exactly ``path`` (``[``, ``*``, ``?`` escaped)."""
    return "".join(f"[{c}]" if c in "[]*?" else c for c in path)


def _write_ref(repo_path: Path, revision: str, commit: str) -> None:
    """Record ``refs/<revision>`` -> commit unless some ref is already there.

    Pulling by commit writes no ref, but tools that load by repo id offline
    (``mlx_lm.load("org/name")``) look one up. An existing ref is left alone:
    it may point to a newer commit another tool fetched.
    """
    if revision == commit or any(p in ("", ".", "..") for p in revision.split("/")):
        return
    ref = repo_path / "refs" / revision
    if ref.exists():
        return
    try:
        atomic_write_text(ref, commit)
    except OSError as exc:
        logger.warning("could not write %s: %s", ref, exc)


def _remove_stale_partials(repo_path: Path, *, before: float) -> None:
    """Delete the ``*.incomplete`` blobs of downloads that died (killed, crashed).

    huggingface_hub names each partial download uniquely and never reuses or
    removes one a killed process left behind, so they pile up. A partial is
    dead when it was last written before ``before`` and no process holds
    huggingface_hub's download lock for its blob.
    """
    locks = repo_path.parent / ".locks" / repo_path.name
    try:
        entries = list(os.scandir(repo_path / "blobs"))
    except OSError:
        return
    for entry in entries:
        if not entry.name.endswith(".incomplete"):
            continue
        etag = entry.name.split(".", 1)[0]  # <etag>.<random>.incomplete or <etag>.incomplete
        try:
            if entry.stat(follow_symlinks=False).st_mtime >= before:
                continue
            if _is_locked(locks / f"{etag}.lock"):
                continue
            Path(entry.path).unlink()
            logger.info("removed a dead partial download: %s", entry.path)
        except OSError:
            continue


def _is_locked(lock_file: Path) -> bool:
    """Whether some process holds the (flock) lock on ``lock_file``; True when unsure."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): cannot tell, so assume a live download
        return True
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


@cache
def _silent_tqdm() -> type[Any]:
    """huggingface_hub's tqdm, always disabled: library code does not draw progress bars."""
    from huggingface_hub.utils.tqdm import tqdm as hf_tqdm

    class SilentTqdm(hf_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]

    return SilentTqdm
