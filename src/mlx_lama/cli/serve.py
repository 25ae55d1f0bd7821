"""``mlx-lama serve``: the daemon, an Ollama- and OpenAI-compatible gateway."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from mlx_lama.cli._app import app
from mlx_lama.cli._common import (
    DEFAULT_READY_TIMEOUT,
    ManifestFile,
    ReadyTimeout,
    debug_enabled,
    handles_errors,
)


@app.command()
@handles_errors
def serve(
    file: ManifestFile = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Allow listening on a non-loopback address without [server] api_key.",
        ),
    ] = False,
    timeout: ReadyTimeout = DEFAULT_READY_TIMEOUT,
    stop_all_on_exit: Annotated[
        bool,
        typer.Option(
            "--stop-all-on-exit",
            help='On exit, stop the serve = "always" servers too (they keep running otherwise).',
        ),
    ] = False,
) -> None:
    """Run the daemon: the Ollama and OpenAI APIs on [server] host:port.

    Applies the manifest first (stopping servers it no longer wants, starting
    the serve = "always" ones) and adopts servers already running. Models
    with serve = "on-demand" start on their first request and stop after
    keep_alive idle. Saving mlxlama.toml (or its lock) applies the change at
    once: aliases and sampling defaults without a restart, a changed launch
    setting by restarting only that server; an invalid save is reported and
    ignored. A server that crashes is restarted with backoff (1 s doubling to
    60 s; after 5 failures in 10 minutes it is marked failed until the
    manifest changes). SIGHUP reapplies the manifest. MLX_LAMA_HOST
    overrides the address, in the forms OLLAMA_HOST takes (127.0.0.1:11435,
    :8080, http://0.0.0.0). Ctrl-C or SIGTERM stops the gateway (requests get
    10 s to finish) and its on-demand servers; "always" servers keep running
    unless --stop-all-on-exit.
    """
    from mlx_lama.cli._progress import ApplyReporter
    from mlx_lama.cli._workspace import load_workspace, quiet_hub_logging
    from mlx_lama.gateway import server
    from mlx_lama.gateway.supervisor import probe_setting
    from mlx_lama.orchestrator.engines import require_engines

    _configure_logging()
    workspace = load_workspace(file)
    require_engines(workspace.manifest)
    probe_setting()  # a bad MLX_LAMA_PROBE_INTERVAL is refused before anything starts
    listen = server.listen_address(workspace.manifest, insecure=insecure)
    sock = server.open_socket(listen)
    try:
        quiet_hub_logging()
        with ApplyReporter() as reporter:
            result = server.reconcile(
                workspace.manifest_path,
                cache_dir=workspace.cache_dir,
                reporter=reporter,
                on_plan=lambda plan: None if plan.empty else typer.echo(plan.render(), err=True),
                ready_timeout=timeout,
            )
        if result is not None and not result.ok:
            typer.echo(f"warning: {result.summary()}; serving the rest", err=True)
        gateway = server.prepare(
            workspace.manifest_path, cache_dir=workspace.cache_dir, ready_timeout=timeout
        )
        typer.echo(
            f"mlx-lama gateway on {listen.url} "
            f"({len(gateway.manifest.models)} models, manifest {workspace.manifest_path})",
            err=True,
        )
        server.run(gateway, listen, sock, stop_all_on_exit=stop_all_on_exit)
    finally:
        sock.close()


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug_enabled() else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpcore", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
