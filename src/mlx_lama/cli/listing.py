"""``mlx-lama list`` and ``mlx-lama ps``: what is on disk, and what is running."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mlx_lama.cli._app import app
from mlx_lama.cli._common import JsonFlag, ManifestFile, format_table, handles_errors
from mlx_lama.errors import ManifestNotFoundError, MlxLamaError

if TYPE_CHECKING:
    from mlx_lama.orchestrator.inventory import ModelRow
    from mlx_lama.orchestrator.state import ExternalSpec
    from mlx_lama.schema.manifest import Manifest


@app.command("list")
@handles_errors
def list_models(file: ManifestFile = None, as_json: JsonFlag = False) -> None:
    """List models on disk and in the manifest.

    Shows the manifest's models (external ones with status "external"), any
    other model in the Hugging Face cache, and the models of the manifest's
    [remotes] gateways (status "remote NAME"; asked with a 1 s timeout).
    """
    from mlx_lama.cli._workspace import load_workspace, observe_and_warn
    from mlx_lama.humanize import ago_str, size_str
    from mlx_lama.orchestrator.inventory import inventory

    workspace = load_workspace(file)
    desired = workspace.desired()
    rows = inventory(desired, observe_and_warn(workspace, desired))
    rows += _remote_rows(workspace.manifest, {_bare(row.name) for row in rows})
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
def ps(
    file: ManifestFile = None,
    project_only: Annotated[
        bool,
        typer.Option("--project", help="Only this project's servers (the manifest in use)."),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """List model servers: every project's that mlx-lama started, and the manifest's
    external ones.

    Shows the project each server belongs to (its manifest's folder; "(orphan)"
    when that manifest is gone), port, pid, state, uptime, memory and the estimate
    the memory budget counts it as; an
    external server's state is whether it answers right now. While `mlx-lama
    serve` runs, servers it is restarting after a crash, or has given up on,
    are listed too, with the last lines of a failed server's log.
    """
    from mlx_lama import machine
    from mlx_lama.humanize import duration_str, size_str
    from mlx_lama.orchestrator.inventory import (
        external_rows,
        record_hosts,
        server_rows,
        supervised_rows,
    )
    from mlx_lama.orchestrator.memory import record_estimate
    from mlx_lama.orchestrator.observe import (
        observe_externals,
        observe_servers,
        rank_rows,
        resident_memory,
    )

    project, externals = _manifest_externals(file)
    servers = observe_servers()
    if project_only:
        servers = tuple(s for s in servers if s.project == project)
    memory = {s.record.pid: m for s in servers if s.alive and (m := resident_memory(s.record.pid))}
    ranks = {
        s.name: rank_rows(s.record) for s in servers if s.alive and record_hosts(s.record.spec)
    }
    total = machine.total_memory()
    estimates = {s.record.pid: e for s in servers if (e := record_estimate(s.record.spec, total))}
    rows = server_rows(servers, memory, ranks, estimates) + external_rows(
        observe_externals(externals), project
    )
    supervised = _daemon_models()
    listed = {row.name for row in rows if row.up}
    rows += [row for row in supervised_rows(supervised, project) if row.name not in listed]
    rows.sort(key=lambda row: (row.name, row.project))
    now = time.time()
    if as_json:
        typer.echo(json.dumps([row.to_json(now) for row in rows], indent=2))
        return
    table = []
    for row in rows:
        table.append(
            (
                row.name,
                row.project_label,
                row.backend,
                str(row.port),
                str(row.pid) if row.pid is not None else "-",
                row.state,
                duration_str(now - row.started_at)
                if row.up and row.started_at is not None
                else "-",
                size_str(row.memory) if row.memory else "-",
                size_str(row.estimate) if row.estimate else "-",
            )
        )
        table += [
            (
                f"  rank {rank.rank}",
                "",
                rank.host,
                "",
                str(rank.pid),
                "over ssh" if rank.via_ssh else "running",
                "",
                size_str(rank.memory) if rank.memory else "-",
                "",
            )
            for rank in row.ranks
        ]
    header = ("NAME", "PROJECT", "BACKEND", "PORT", "PID", "STATE", "UPTIME", "MEMORY", "ESTIMATE")
    typer.echo(format_table(header, table))
    for row in rows:
        if row.state == "failed":
            typer.echo(f"\n{row.name} failed: {row.detail}")
            tail = supervised.get(row.name, {}).get("log_tail")
            if isinstance(tail, str) and tail.strip():
                typer.echo("  last lines of its log:")
                typer.echo("\n".join("    " + line for line in tail.splitlines()))


def _remote_rows(manifest: Manifest, local: set[str]) -> list[ModelRow]:
    """Rows for the models the manifest's remotes serve (local names win), asking
    each remote for its list; a remote that does not answer is a warning, and the
    models named under it are still listed."""
    if not manifest.remotes:
        return []
    from datetime import datetime

    from mlx_lama.gateway.remotes import probe_remotes
    from mlx_lama.orchestrator.inventory import ModelRow

    rows = []
    for status in probe_remotes(manifest.remotes):
        label = f"remote {status.remote}"
        if status.answering:
            found = []
            for entry in status.models:
                name = str(entry.get("model") or entry.get("name"))
                size = entry.get("size")
                try:
                    modified = datetime.fromisoformat(str(entry.get("modified_at"))).timestamp()
                except ValueError:
                    modified = 0.0
                found.append((name, size if isinstance(size, int) else 0, modified, label))
        else:
            typer.echo(f"warning: {status.warning()}", err=True)
            named = manifest.remotes[status.remote].models
            found = [(name, 0, 0.0, f"{label}, not answering") for name in named]
        rows += [
            ModelRow(name, None, None, size, modified, state, url=status.url, remote=status.remote)
            for name, size, modified, state in found
            if _bare(name) not in local
        ]
    return sorted(rows, key=lambda row: row.name)


def _bare(name: str) -> str:
    """A name as ``list`` compares it: case-insensitive, without ``:latest``."""
    return name.lower().removesuffix(":latest")


def _daemon_models() -> dict[str, dict[str, object]]:
    """The running daemon's view of its servers (``/health``), or {} without one."""
    import httpx

    from mlx_lama.orchestrator.daemonfile import running_daemon

    daemon = running_daemon()
    if daemon is None:
        return {}
    try:
        with httpx.Client(trust_env=False, timeout=2.0) as client:
            models = client.get(str(daemon["url"]) + "/health").json().get("models", {})
    except (httpx.HTTPError, ValueError, AttributeError):
        return {}
    return models if isinstance(models, dict) else {}


def _manifest_externals(file: Path | None) -> tuple[str, tuple[ExternalSpec, ...]]:
    """The project in use (its manifest's key) and its manifest's external models.
    A manifest named with -f must load; a discovered one that does not only costs
    the externals (with a warning), so ``ps`` still shows the servers that are
    running."""
    from mlx_lama import paths
    from mlx_lama.orchestrator.desired import external_specs
    from mlx_lama.orchestrator.projects import project_key
    from mlx_lama.schema import find_manifest, load_manifest

    if file is not None:
        path = find_manifest(file).path
        return project_key(path), external_specs(load_manifest(path))
    try:
        path = find_manifest(None, create=False).path
    except ManifestNotFoundError:
        return project_key(paths.global_manifest()), ()
    externals: tuple[ExternalSpec, ...] = ()
    try:
        externals = external_specs(load_manifest(path))
    except ManifestNotFoundError:
        pass
    except MlxLamaError as error:
        typer.echo(f"warning: external servers not shown: {error}", err=True)
    return project_key(path), externals
