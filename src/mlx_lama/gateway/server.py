"""``mlx-lama serve``: apply the manifest, adopt what runs, then serve the gateway.

:func:`listen_address` decides where to listen (``MLX_LAMA_HOST`` over the
manifest's ``[server]``) and refuses a non-loopback address without an API
key. :func:`open_socket` binds it first, so a taken port fails before anything
else happens. :func:`prepare` reconciles once (stopping servers the manifest
no longer wants and starting the ``always`` ones) and builds the
:class:`Gateway` with every running server of ours adopted (and the run
records of dead ones dropped). :func:`run` serves the app on the socket under
uvicorn until interrupted, while the :class:`Supervisor` keeps the servers
matching the manifest; on the way out the on-demand servers it holds are
stopped and the ``always`` ones keep running for the next ``serve`` or
``apply`` to adopt (unless told to stop them too).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
from pathlib import Path
from types import FrameType

from mlx_lama import machine
from mlx_lama.errors import MlxLamaError, UsageError
from mlx_lama.gateway.core import Gateway
from mlx_lama.gateway.security import Listen, security_policy
from mlx_lama.netaddr import is_loopback_host, parse_listen_address
from mlx_lama.orchestrator.daemonfile import daemon_file
from mlx_lama.orchestrator.projects import remember
from mlx_lama.orchestrator.scheduler import Scheduler
from mlx_lama.orchestrator.slots import DEFAULT_MAX_QUEUE, SchedulerConfig
from mlx_lama.schema import load_manifest
from mlx_lama.schema.lockfile import lock_path_for, read_lock
from mlx_lama.schema.manifest import Manifest
from mlx_lama.timings import timings

log = logging.getLogger(__name__)

HOST_ENV = "MLX_LAMA_HOST"
MAX_QUEUE_ENV = "MLX_LAMA_MAX_QUEUE"


def listen_address(manifest: Manifest, *, insecure: bool = False) -> Listen:
    """Where the gateway listens. Raises UsageError for a bad ``MLX_LAMA_HOST``, or a
    non-loopback address without ``[server] api_key`` (unless ``insecure``)."""
    server = manifest.server
    try:
        host, port = parse_listen_address(os.environ.get(HOST_ENV, ""), server.host, server.port)
    except ValueError as error:
        raise UsageError(f"{HOST_ENV}={os.environ.get(HOST_ENV)!r} is invalid: {error}") from None
    if not is_loopback_host(host) and server.api_key is None and not insecure:
        raise UsageError(
            f"refusing to listen on {host}:{port} without an API key: anyone on the network "
            "could run and manage models",
            hint="set api_key under [server] in mlxlama.toml, or pass --insecure if this "
            "network is trusted",
        )
    return Listen(host, port)


def open_socket(listen: Listen) -> socket.socket:
    """A listening socket on ``listen``; a clear error when the port is taken."""
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((listen.host, listen.port))
        sock.listen(2048)
    except OSError as error:
        sock.close()
        raise MlxLamaError(
            f"cannot listen on {listen.host}:{listen.port}: {error.strerror or error}",
            hint="is Ollama or another `mlx-lama serve` running there? Stop it, or set "
            f"{HOST_ENV} (e.g. {HOST_ENV}=127.0.0.1:11435) or [server] port",
        ) from None
    sock.set_inheritable(False)
    return sock


def prepare(
    manifest_path: Path,
    *,
    cache_dir: Path,
    ready_timeout: float | None = None,
) -> Gateway:
    """The gateway for the manifest as it is now, with running servers adopted."""
    manifest = load_manifest(manifest_path)
    config = SchedulerConfig(max_queue=_max_queue())
    gateway = Gateway(
        manifest_path,
        manifest,
        read_lock(lock_path_for(manifest_path)),
        cache_dir=cache_dir,
        scheduler=Scheduler(config),
        total_memory=machine.total_memory(),
        wired_limit=machine.gpu_wired_limit(),
        ready_timeout=ready_timeout,
    )
    remember(manifest_path)  # so other projects' prunes keep what it names
    gateway.scheduler.adopt_running(gateway.project)
    return gateway


def run(
    gateway: Gateway, listen: Listen, sock: socket.socket, *, stop_all_on_exit: bool = False
) -> None:
    """Serve until SIGINT/SIGTERM: uvicorn on the already-bound ``sock``. On the way
    out, requests get ``shutdown_grace`` seconds to finish, then the on-demand servers (and with
    ``stop_all_on_exit`` the ``always`` ones) are stopped. While it runs,
    ``daemon.json`` in MLX_LAMA_HOME tells other commands where it listens."""
    import uvicorn

    from mlx_lama.gateway.app import create_app

    app = create_app(
        gateway, security_policy(gateway.manifest, listen), stop_all_on_exit=stop_all_on_exit
    )
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        proxy_headers=False,  # nothing is in front of it; a client must not pick its address
        timeout_graceful_shutdown=math.ceil(timings().shutdown_grace),
    )
    with daemon_file(listen.url, gateway.manifest_path):
        _quiet_server_class()(config).run(sockets=[sock])


def _quiet_server_class() -> type:
    import uvicorn

    class QuietServer(uvicorn.Server):
        """Shuts down on SIGINT/SIGTERM without re-raising the signal afterwards, which
        would turn a clean stop into a KeyboardInterrupt traceback (a second ^C forces)."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True

    return QuietServer


def _max_queue() -> int:
    text = os.environ.get(MAX_QUEUE_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_QUEUE
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise UsageError(f"{MAX_QUEUE_ENV}={text!r} is invalid: use a whole number of at least 1")
    return int(text)
