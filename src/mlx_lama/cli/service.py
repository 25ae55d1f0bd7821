"""``mlx-lama service install|uninstall|status|logs``: the daemon as a login service.

What the service is and how each service manager runs it lives in
:mod:`mlx_lama.loginservice`; this module parses, calls it, and renders.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mlx_lama.cli._app import app
from mlx_lama.cli._common import handles_errors
from mlx_lama.cli.logs import Follow, Tail

if TYPE_CHECKING:
    from mlx_lama.loginservice import Manager

service_app = typer.Typer(
    help="Run the daemon as a login service (launchd on macOS, systemd --user on Linux): "
    "started at login, restarted when it dies, on 127.0.0.1:11434 for every client.",
    no_args_is_help=True,
)
app.add_typer(service_app, name="service")

ServiceManifest = Annotated[
    Path | None,
    typer.Option(
        "--file",
        "-f",
        help="The manifest the service serves (default: the global ~/.mlx-lama/mlxlama.toml, "
        "whatever folder this runs in).",
        show_default=False,
    ),
]


@service_app.command()
@handles_errors
def install(
    file: ServiceManifest = None,
    print_only: Annotated[
        bool,
        typer.Option("--print", help="Print the service file for this machine; install nothing."),
    ] = False,
) -> None:
    """Install the service and start it; installing again updates it in place."""
    from mlx_lama import loginservice, paths
    from mlx_lama.schema import find_manifest, load_manifest
    from mlx_lama.schema.discovery import write_empty_manifest

    if file is None:
        manifest = paths.global_manifest()
        write_empty_manifest(manifest)  # created valid and empty the first time
    else:
        manifest = find_manifest(file).path
    load_manifest(manifest)  # a service that could only fail to start is refused here
    manager = loginservice.manager_here()
    service = loginservice.definition(manifest)
    if print_only:
        sys.stdout.write(manager.text(service).decode())
        return
    _require(manager)
    _warn_of_another_daemon(manager)
    updated = manager.install(service)
    verb = "Updated" if updated else "Installed"
    typer.echo(f"{verb} {manager.file} ({manager.name}): mlx-lama serve -f {service.manifest}")
    typer.echo(f"Its log: {service.log_path} (`mlx-lama service logs`).")


@service_app.command()
@handles_errors
def uninstall() -> None:
    """Stop the service and remove its file. The serve = "always" servers keep running
    until a daemon adopts or stops them, as after Ctrl-C."""
    from mlx_lama import loginservice

    manager = loginservice.manager_here()
    _require(manager)
    if manager.uninstall():
        typer.echo(f"Removed {manager.file}; the daemon it ran is stopped.")
    else:
        typer.echo(f"No service installed ({manager.file} is not there).")


@service_app.command()
@handles_errors
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Whether the service is installed, loaded and running: its pid and address."""
    from mlx_lama import loginservice
    from mlx_lama.orchestrator.daemonfile import running_daemon

    manager = loginservice.manager_here()
    state = manager.status()
    daemon = running_daemon()
    ours = daemon is not None and state.pid is not None and daemon.get("pid") == state.pid
    row: dict[str, Any] = {
        "manager": state.manager,
        "file": str(state.file),
        "installed": state.installed,
        "loaded": state.loaded,
        "running": state.running,
        "pid": state.pid,
        "state": state.detail,
        "address": daemon.get("url") if ours and daemon else None,
        "manifest": daemon.get("manifest") if ours and daemon else None,
        "problem": state.problem,
    }
    if as_json:
        typer.echo(json.dumps(row, indent=2))
        return
    width = max(len(key) for key in row)
    for key, value in row.items():
        if value is None or value == "":
            continue
        shown = ("yes" if value else "no") if isinstance(value, bool) else value
        typer.echo(f"{key:<{width}}  {shown}")


@service_app.command()
@handles_errors
def logs(follow: Follow = False, lines: Tail = 100) -> None:
    """Show the service's log (the daemon's, logs/daemon.log); --follow keeps printing."""
    from mlx_lama.cli.logs import logs as show_logs

    show_logs(model=None, follow=follow, lines=lines, file=None)


def _warn_of_another_daemon(manager: Manager) -> None:
    """A daemon started by hand holds the gateway's port: the service's would fail to
    listen, and be restarted, until that one stops."""
    from mlx_lama.orchestrator.daemonfile import running_daemon

    daemon = running_daemon()
    if daemon is not None and daemon.get("pid") != manager.status().pid:
        typer.echo(
            f"warning: a daemon not run by the service (pid {daemon.get('pid')}, "
            f"{daemon.get('url')}) is running; the service's cannot listen until it stops "
            f"(`kill {daemon.get('pid')}`)",
            err=True,
        )


def _require(manager: Manager) -> None:
    """Refuse where the service manager cannot be reached (a container, CI, ssh without
    a user session), saying how to see the file instead."""
    from mlx_lama.loginservice import ServiceError

    why = manager.missing()
    if why is not None:
        raise ServiceError(
            f"cannot reach {manager.name} here: {why}",
            hint="`mlx-lama service install --print` shows the file to install by hand; "
            "or run `mlx-lama serve` in a terminal",
        )
