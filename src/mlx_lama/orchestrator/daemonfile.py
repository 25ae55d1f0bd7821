"""``daemon.json``: where the running ``mlx-lama serve`` listens, for other commands.

The daemon writes it (atomically) when it starts serving and removes it when
it stops. Readers trust it only while the process it names is alive with the
recorded start time, so a file left by a killed daemon is ignored. ``ps``
asks the daemon named there for the servers it is restarting or has given
up on; later verbs use it to hand their work to the daemon.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from mlx_lama import paths
from mlx_lama.atomic import atomic_write_text
from mlx_lama.orchestrator.runrecords import CREATE_TIME_TOLERANCE

DAEMON_FILE = "daemon.json"


def daemon_path() -> Path:
    return paths.home() / DAEMON_FILE


@contextlib.contextmanager
def daemon_file(url: str, manifest_path: Path) -> Iterator[None]:
    """``daemon.json`` (pid, start time, url, manifest) while the block runs."""
    path = daemon_path()
    me = psutil.Process()
    info = {
        "pid": me.pid,
        "process_started": me.create_time(),
        "url": url,
        "manifest": str(manifest_path),
        "started_at": time.time(),
    }
    atomic_write_text(path, json.dumps(info, indent=2) + "\n")
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text(encoding="utf-8")).get("pid") == me.pid:
                path.unlink()


def running_daemon() -> dict[str, Any] | None:
    """What ``daemon.json`` says, if the daemon it names is still running."""
    try:
        info = json.loads(daemon_path().read_text(encoding="utf-8"))
        proc = psutil.Process(int(info["pid"]))
        if abs(proc.create_time() - float(info["process_started"])) > CREATE_TIME_TOLERANCE:
            return None
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return None
    return info if isinstance(info, dict) else None
