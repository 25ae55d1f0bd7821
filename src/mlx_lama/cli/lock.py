"""``mlx-lama lock``: pin every model's revision to a commit in mlxlama.lock."""

from __future__ import annotations

from typing import Annotated

import typer

from mlx_lama.cli._app import app
from mlx_lama.cli._common import ManifestFile, handles_errors, plural


@app.command()
@handles_errors
def lock(
    models: Annotated[
        list[str] | None, typer.Argument(help="Models to upgrade (default: all).")
    ] = None,
    file: ManifestFile = None,
    upgrade: Annotated[
        bool, typer.Option("--upgrade", "-U", help="Re-resolve revisions even if locked.")
    ] = False,
) -> None:
    """Pin model revisions to commits in mlxlama.lock.

    Asks the hub which commit each revision is; downloads nothing.
    """
    from mlx_lama.cli._workspace import load_workspace, quiet_hub_logging
    from mlx_lama.filelock import apply_lock
    from mlx_lama.orchestrator.relock import relock
    from mlx_lama.schema.lockfile import save_lock

    if models and not upgrade:
        raise typer.BadParameter("naming models only makes sense with --upgrade")
    quiet_hub_logging()
    with apply_lock():
        workspace = load_workspace(file)
        new_lock, changes = relock(
            workspace.manifest, workspace.lock, upgrade=upgrade, only=models or ()
        )
        path = workspace.lock_path
        save_lock(path, new_lock)
    failed = [c for c in changes if c.after is None]
    for change in changes:
        if change.after is None:
            typer.echo(f"✗ {change.name}: {change.error}", err=True)
        elif change.before is None:
            typer.echo(f"+ {change.name}  {change.after.repo}@{change.after.revision} "
                       f"{change.after.commit[:12]}")  # fmt: skip
        else:
            typer.echo(f"~ {change.name}  {change.before.commit[:12]} -> "
                       f"{change.after.commit[:12]}")  # fmt: skip
    updated = len(changes) - len(failed)
    typer.echo(f"Locked {plural(len(new_lock.models), 'model')} ({updated} updated) in {path}")
    if failed:
        raise typer.Exit(1)
