"""``mlx-lama backends`` and ``mlx-lama install``: the engines, and getting them."""

from __future__ import annotations

import json
import shlex
import subprocess
from typing import Annotated

import typer

from mlx_lama.cli._app import app
from mlx_lama.cli._common import JsonFlag, format_table, handles_errors


@app.command()
@handles_errors
def backends(as_json: JsonFlag = False) -> None:
    """List engines: available or not, how found, version, capabilities."""
    from mlx_lama.backends.base import backend_names, get_backend

    rows = []
    for name in backend_names():
        backend = get_backend(name)
        found = backend.detect()
        install = backend.install_commands()
        rows.append(
            {
                "name": name,
                "available": found.available,
                "found_by": found.found_by,
                "detail": found.detail,
                "version": found.version,
                "capabilities": backend.capabilities().names(),
                "install": None if found.available or not install else f"mlx-lama install {name}",
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = [
        (
            str(row["name"]),
            "yes" if row["available"] else "no",
            str(row["found_by"] or "-"),
            str(row["version"] or "-"),
            ", ".join(row["capabilities"]),  # type: ignore[arg-type]
            str(row["install"] or ""),
        )
        for row in rows
    ]
    typer.echo(
        format_table(("NAME", "AVAILABLE", "FOUND BY", "VERSION", "CAPABILITIES", "INSTALL"), table)
    )


@app.command()
@handles_errors
def install(
    backends: Annotated[
        list[str],
        typer.Argument(
            help="mlx-lm, vllm-mlx or mlx-embeddings (one or more).", metavar="ENGINE..."
        ),
    ],
    upgrade: Annotated[
        bool, typer.Option("--upgrade", help="Upgrade them to their newest release.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the commands and stop.")
    ] = False,
) -> None:
    """Install engines (uv, else pip). vllm-mlx and mlx-embeddings (embedding models)
    each go into an environment of their own under ~/.mlx-lama/engines
    ($MLX_LAMA_ENGINES), so their dependencies never change mlx-lama's packages or
    each other's; mlx-lm into mlx-lama's environment."""
    from mlx_lama.backends.base import get_backend

    engines = [get_backend(name) for name in backends]  # an unknown name stops it first
    for engine in engines:
        commands = engine.install_commands(upgrade=upgrade)
        if not commands:
            typer.echo(f"The {engine.name} backend has nothing to install.")
            continue
        for command in commands:
            typer.echo(f"$ {shlex.join(command)}", err=True)
            if dry_run:
                continue
            code = subprocess.call(command)
            if code != 0:
                raise typer.Exit(code)
        if not dry_run:
            typer.echo(f"Installed the {engine.name} backend.")


@app.command()
@handles_errors
def uninstall(
    backend: Annotated[
        str, typer.Argument(help="vllm-mlx or mlx-embeddings (an engine in its own environment).")
    ],
) -> None:
    """Remove an engine's own environment (what `mlx-lama install` made under
    ~/.mlx-lama/engines); mlx-lama's packages and other engines stay as they are.
    Refused while a server runs from it."""
    from mlx_lama.backends.base import get_backend
    from mlx_lama.backends.interpreters import remove_environment

    engine = get_backend(backend).name  # an unknown name is a usage error here
    removed = remove_environment(engine)
    typer.echo(f"Removed {removed}; `mlx-lama install {engine}` puts it back.")
