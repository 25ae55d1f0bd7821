"""``mlx-lama list`` and ``mlx-lama ps``: what is on disk, and what is running."""

from __future__ import annotations

import json
import time

import typer

from mlx_lama.cli._app import app
from mlx_lama.cli._common import JsonFlag, ManifestFile, format_table, handles_errors


@app.command("list")
@handles_errors
def list_models(file: ManifestFile = None, as_json: JsonFlag = False) -> None:
    """List models on disk and in the manifest.

    Shows the manifest's models and any other model in the Hugging Face cache.
    """
    from mlx_lama.cli._workspace import load_workspace, observe_and_warn
    from mlx_lama.humanize import ago_str, size_str
    from mlx_lama.orchestrator.inventory import inventory

    workspace = load_workspace(file)
    rows = inventory(workspace.desired(), observe_and_warn(workspace))
    if as_json:
        typer.echo(json.dumps([row.to_json() for row in rows], indent=2))
        return
    now = time.time()
    table = [
        (
            row.name,
            row.commit[:12] if row.commit else "-",
            size_str(row.size) if row.size else "-",
            ago_str(now - row.modified) if row.modified else "-",
            row.status,
        )
        for row in rows
    ]
    typer.echo(format_table(("NAME", "ID", "SIZE", "MODIFIED", "STATUS"), table))


@app.command("ps")
@handles_errors
def ps(as_json: JsonFlag = False) -> None:
    """List running model servers: port, pid, state, uptime, memory."""
    from mlx_lama.humanize import duration_str, size_str
    from mlx_lama.orchestrator.inventory import server_rows
    from mlx_lama.orchestrator.observe import observe_servers, resident_memory

    servers = observe_servers()
    memory = {s.record.pid: m for s in servers if s.alive and (m := resident_memory(s.record.pid))}
    rows = server_rows(servers, memory)
    now = time.time()
    if as_json:
        typer.echo(json.dumps([row.to_json(now) for row in rows], indent=2))
        return
    table = [
        (
            row.name,
            row.backend,
            str(row.port),
            str(row.pid),
            row.state,
            duration_str(now - row.started_at) if row.state in ("running", "unresponsive") else "-",
            size_str(row.memory) if row.memory else "-",
        )
        for row in rows
    ]
    typer.echo(format_table(("NAME", "BACKEND", "PORT", "PID", "STATE", "UPTIME", "MEMORY"), table))
