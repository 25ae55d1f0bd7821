"""``mlx-lama serve``: the daemon, an Ollama- and OpenAI-compatible gateway."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, TextIO

import typer

from mlx_lama.cli._app import app
from mlx_lama.cli._common import (
    DEFAULT_READY_TIMEOUT,
    ManifestFile,
    ReadyTimeout,
    debug_enabled,
    handles_errors,
)
from mlx_lama.errors import UsageError

DAEMON_LOG_BYTES = 10 * 1024 * 1024  # per file; three old ones are kept


@app.command()
@handles_errors
def serve(
    model: Annotated[
        str | None,
        typer.Argument(
            help="Serve this model always (pulling it first if needed) instead of running "
            "the daemon.",
            metavar="MODEL",
            show_default=False,
        ),
    ] = None,
    file: ManifestFile = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port", help="With MODEL: the port its server listens on.", min=1, max=65535
        ),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend", help="With MODEL: the backend that serves it (mlx-lm, vllm-mlx, ...)."
        ),
    ] = None,
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
    """Run the daemon: the Ollama and OpenAI APIs on [server] host:port. With MODEL,
    serve that model always instead.

    `mlx-lama serve MODEL` sets serve = "always" for MODEL in the manifest
    (adding and pulling it when it is not there; --port and --backend set
    those keys too) and starts its server, which keeps running after the
    command ends; a running daemon for the manifest starts it instead.
    `mlx-lama stop MODEL` undoes it.

    Without MODEL:

    Applies the manifest first (stopping servers it no longer wants, starting
    the serve = "always" ones) and adopts servers already running. Models
    with serve = "on-demand" start on their first request and stop after
    keep_alive idle; the models of [remotes] gateways are listed and answered
    through theirs. Saving mlxlama.toml (or its lock) applies the change at
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
    if model is not None:
        if insecure or stop_all_on_exit:
            raise UsageError(
                "--insecure and --stop-all-on-exit are for the daemon, not for serve MODEL",
                hint="run `mlx-lama serve` without a model for the daemon",
            )
        serve_model(model, file, port=port, backend=backend, timeout=timeout)
        return
    if port is not None or backend is not None:
        raise UsageError(
            "--port and --backend go with a MODEL",
            hint="the daemon's address is [server] host and port, or MLX_LAMA_HOST",
        )
    from mlx_lama.cli._progress import ApplyReporter
    from mlx_lama.cli._workspace import load_workspace, quiet_hub_logging
    from mlx_lama.gateway import server
    from mlx_lama.orchestrator.engines import require_engines
    from mlx_lama.orchestrator.reconcile import reconcile
    from mlx_lama.orchestrator.supervisor import probe_setting
    from mlx_lama.timings import timings

    _configure_logging()
    workspace = load_workspace(file)
    require_engines(workspace.manifest)
    probe_setting()  # a bad MLX_LAMA_PROBE_INTERVAL or MLX_LAMA_TIMINGS is refused
    timings()  # before anything starts
    listen = server.listen_address(workspace.manifest, insecure=insecure)
    sock = server.open_socket(listen)
    try:
        quiet_hub_logging()
        with ApplyReporter() as reporter:
            result = reconcile(
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


def serve_model(
    name: str, file: Path | None, *, port: int | None, backend: str | None, timeout: float
) -> None:
    """Set ``serve = "always"`` (and ``port``, ``backend``) for ``name``, pulling it into
    the manifest first when it is not there, then start it (or let the daemon)."""
    from mlx_lama.cli._handoff import settle
    from mlx_lama.cli.pull import pull_models
    from mlx_lama.orchestrator.entries import pull_source
    from mlx_lama.schema import editor, find_manifest, load_manifest

    path = find_manifest(file).path
    source = pull_source(load_manifest(path), name)
    if source.existing is None:
        (key,) = pull_models(path, [name], serve=None)
    else:
        key = source.existing
    fields: dict[str, object] = {"serve": "always"}
    if port is not None:
        fields["port"] = port
    if backend is not None:
        fields["backend"] = backend
    editor.set_model_fields(path, key, fields)
    settle(path, [key], timeout=timeout)
    typer.echo(f"serving {key!r}", err=True)


def _configure_logging() -> None:
    """Log to stderr and to ``logs/daemon.log`` (what `mlx-lama logs` shows), kept
    to a few rotated files of DAEMON_LOG_BYTES."""
    from logging.handlers import RotatingFileHandler

    from mlx_lama import paths

    log_file = paths.logs_dir() / "daemon.log"
    # Started in the background (`mlx-lama launch`), stderr already is daemon.log:
    # a stderr handler would write every line into it twice.
    handlers: list[logging.Handler] = (
        [] if _is_file(sys.stderr, log_file) else [logging.StreamHandler(sys.stderr)]
    )
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(
            RotatingFileHandler(log_file, maxBytes=DAEMON_LOG_BYTES, backupCount=3, delay=True)
        )
    except OSError as error:
        typer.echo(f"warning: cannot write {log_file}: {error.strerror or error}", err=True)
    logging.basicConfig(
        level=logging.DEBUG if debug_enabled() else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
    )
    for noisy in ("httpx", "httpcore", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _is_file(stream: TextIO, path: Path) -> bool:
    """Whether ``stream`` writes to the file at ``path``."""
    try:
        return os.path.samestat(os.fstat(stream.fileno()), path.stat())
    except (OSError, ValueError, AttributeError):  # no such file, or no real descriptor
        return False
