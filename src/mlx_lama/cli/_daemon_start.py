"""Start ``mlx-lama serve`` in the background for a command that needs the daemon.

``mlx-lama launch`` calls :func:`ensure_daemon`: the daemon already serving
the manifest is used as it is; otherwise ``mlx-lama serve -f MANIFEST`` is
started detached (its own session, stdin from /dev/null, stdout and stderr
appended to ``logs/daemon.log``, the file its logging writes and ``mlx-lama
logs`` reads) and waited for until ``daemon.json`` names it and it answers
``/health``. It keeps running after the command that started it; ``kill PID``
(SIGTERM) stops it as Ctrl-C stops a foreground ``serve``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from mlx_lama import paths
from mlx_lama.cli.daemonclient import Daemon, DaemonError, daemon_for
from mlx_lama.errors import MlxLamaError
from mlx_lama.orchestrator.daemonfile import running_daemon

DAEMON_LOG = "daemon.log"  # what `serve` logs to (cli/serve.py) and `logs` reads
START_TIMEOUT = 330.0  # s: serve starts the serve = "always" models before it answers
POLL_SECONDS = 0.1

# Daemons this process started. Holding the Popen keeps Python from warning that a
# child it never waited for still runs.
_STARTED: dict[int, subprocess.Popen[bytes]] = {}


def ensure_daemon(
    manifest_path: Path, api_key: str | None, *, timeout: float = START_TIMEOUT
) -> tuple[Daemon, bool]:
    """The daemon serving ``manifest_path``, started in the background when none does;
    and whether it was started here. Raises MlxLamaError when another manifest's
    daemon runs, or when the new one exits or does not answer within ``timeout``."""
    daemon = daemon_for(manifest_path, api_key)
    if daemon is not None:
        return daemon, False
    other = running_daemon()
    if other is not None:
        raise MlxLamaError(
            f"the mlx-lama daemon (pid {other.get('pid')}) at {other.get('url')} serves "
            f"another manifest, {other.get('manifest')}",
            hint=f"stop it (`kill {other.get('pid')}`) or pass -f {other.get('manifest')}",
        )
    return start_daemon(manifest_path, api_key, timeout=timeout), True


def start_daemon(manifest_path: Path, api_key: str | None, *, timeout: float) -> Daemon:
    """Start ``mlx-lama serve -f manifest_path`` detached; return it once it answers."""
    log_path = paths.logs_dir() / DAEMON_LOG
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "mlx_lama", "serve", "-f", str(manifest_path.resolve())]
    stamp = datetime.now(UTC).astimezone().isoformat(timespec="seconds")
    with log_path.open("ab") as log_file:
        log_file.write(f"\n===== {stamp} mlx-lama launch starts the daemon =====\n".encode())
        log_file.flush()
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=paths.home(),  # a fixed cwd, as for model servers
                start_new_session=True,  # Ctrl-C in the tool's terminal must not reach it
            )
        except OSError as error:
            raise MlxLamaError(f"cannot start `mlx-lama serve`: {error}") from None
    _STARTED[proc.pid] = proc
    return wait_answering(proc, manifest_path, api_key, log_path=log_path, timeout=timeout)


def wait_answering(
    proc: subprocess.Popen[bytes],
    manifest_path: Path,
    api_key: str | None,
    *,
    log_path: Path,
    timeout: float,
) -> Daemon:
    """Poll until the daemon ``proc`` is named by ``daemon.json`` and answers ``/health``."""
    deadline = time.monotonic() + timeout
    while True:
        code = proc.poll()
        if code is not None:
            raise MlxLamaError(
                f"`mlx-lama serve` exited with code {code} before it answered; see {log_path}",
                hint="`mlx-lama logs` shows it; fix what it says, or run `mlx-lama serve` "
                "in a terminal to watch it start",
            )
        daemon = daemon_for(manifest_path, api_key)
        if daemon is not None and daemon.pid == proc.pid and _answers(daemon):
            return daemon
        if time.monotonic() > deadline:
            raise MlxLamaError(
                f"the mlx-lama daemon (pid {proc.pid}) did not answer within {timeout:.0f} s; "
                f"see {log_path}",
                hint=f"it may still be starting its models; `kill {proc.pid}` stops it",
            )
        time.sleep(POLL_SECONDS)


def _answers(daemon: Daemon) -> bool:
    try:
        daemon.health()
    except DaemonError:
        return False
    return True
