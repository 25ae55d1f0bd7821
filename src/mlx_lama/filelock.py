"""The apply lock: one mlx-lama process at a time changes servers, models or the manifest.

``apply``, the daemon's reconcile loop and the CLI's manifest edits wrap their
work in :func:`apply_lock`. It is an exclusive ``fcntl.flock`` on
``$MLX_LAMA_HOME/apply.lock``, so the kernel releases it when the holder
exits, however it exits. The file is never deleted (two processes could then
lock two different files); the holder writes its pid and command into it so
a waiter can say whom it waits for.

Re-entrant within one thread (an edit that then applies takes it twice);
other threads and processes wait. Never prints: ``on_wait`` lets the CLI say
"waiting for another mlx-lama apply...".
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from mlx_lama import paths
from mlx_lama.errors import MlxLamaError

log = logging.getLogger(__name__)

_POLL = 0.05
_local = threading.local()


class ApplyLockTimeout(MlxLamaError):
    """Another mlx-lama process held the apply lock for longer than we were told to wait."""


def _depth() -> int:
    return int(getattr(_local, "depth", 0))


def _describe_holder(handle: IO[str]) -> str:
    """Who holds the lock, from what the holder wrote into the file."""
    try:
        handle.seek(0)
        info = json.loads(handle.read() or "{}")
        return f"pid {int(info['pid'])}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another mlx-lama process"


def _try_lock(handle: IO[str]) -> bool:
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextmanager
def apply_lock(
    *,
    on_wait: Callable[[], None] | None = None,
    timeout: float | None = None,
) -> Iterator[None]:
    """Hold the apply lock for the ``with`` block, waiting for another holder if needed.

    ``on_wait`` is called once when we have to wait (the holder, "pid 123:
    mlx-lama apply", goes to the log). ``timeout`` (seconds) bounds the wait;
    past it :class:`ApplyLockTimeout` names the holder. None waits forever.
    """
    if _depth() > 0:  # this thread holds it already
        _local.depth = _depth() + 1
        try:
            yield
        finally:
            _local.depth = _depth() - 1
        return

    path = paths.apply_lock()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+", encoding="utf-8") as handle:
        if not _try_lock(handle):
            holder = _describe_holder(handle)
            log.info("waiting for the apply lock %s (held by %s)", path, holder)
            if on_wait is not None:
                on_wait()
            _wait(handle, path, holder, timeout)
        try:
            handle.seek(0)
            handle.truncate()
            command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]).strip()
            handle.write(json.dumps({"pid": os.getpid(), "command": command or "python"}))
            handle.flush()
            _local.depth = 1
            yield
        finally:
            _local.depth = 0
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _wait(handle: IO[str], path: Path, holder: str, timeout: float | None) -> None:
    if timeout is None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        return
    deadline = time.monotonic() + timeout
    while not _try_lock(handle):
        if time.monotonic() >= deadline:
            raise ApplyLockTimeout(
                f"another mlx-lama process ({holder}) has held {path} for over {timeout:g}s",
                hint="wait for it to finish, or stop it if it is stuck",
            )
        time.sleep(_POLL)
