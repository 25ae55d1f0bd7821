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
    backend: Annotated[str, typer.Argument(help="mlx-lm or vllm-mlx.")],
    upgrade: Annotated[
        bool, typer.Option("--upgrade", help="Upgrade it to the newest release.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the commands and stop.")
    ] = False,
) -> None:
    """Install an engine (uv, else pip). vllm-mlx goes into an environment of its own
    under ~/.mlx-lama/engines ($MLX_LAMA_ENGINES), so its PyTorch and its pinned
    mlx-lm never change mlx-lama's packages; mlx-lm into mlx-lama's environment."""
    from mlx_lama.backends.base import get_backend

    commands = get_backend(backend).install_commands(upgrade=upgrade)
    if not commands:
        typer.echo(f"The {backend} backend has nothing to install.")
        return
    for command in commands:
        typer.echo(f"$ {shlex.join(command)}", err=True)
        if dry_run:
            continue
        code = subprocess.call(command)
        if code != 0:
            raise typer.Exit(code)
    if not dry_run:
        typer.echo(f"Installed the {backend} backend.")


@app.command()
@handles_errors
def uninstall(
    backend: Annotated[str, typer.Argument(help="vllm-mlx (an engine in its own environment).")],
) -> None:
    """Remove an engine's own environment (what `mlx-lama install` made under
    ~/.mlx-lama/engines); mlx-lama's packages and other engines stay as they are.
    Refused while a server runs from it."""
    from mlx_lama.backends.base import get_backend
    from mlx_lama.backends.interpreters import remove_environment

    engine = get_backend(backend).name  # an unknown name is a usage error here
    removed = remove_environment(engine)
    typer.echo(f"Removed {removed}; `mlx-lama install {engine}` puts it back.")
