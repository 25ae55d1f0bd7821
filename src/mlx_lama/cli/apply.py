"""``mlx-lama apply``: make the machine match the manifest, after showing the plan."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from mlx_lama.cli._app import app
from mlx_lama.cli._common import ManifestFile, handles_errors
from mlx_lama.cli.plan import Prune

if TYPE_CHECKING:
    from mlx_lama.cli._workspace import Workspace


@app.command()
@handles_errors
def apply(
    file: ManifestFile = None,
    prune: Prune = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan and stop.")] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Stop servers and remove models without asking.")
    ] = False,
    locked: Annotated[
        bool,
        typer.Option("--locked", help="Fail if mlxlama.lock does not match the manifest."),
    ] = False,
    timeout: Annotated[
        float,
        typer.Option("--timeout", help="Seconds a started server gets to answer.", min=1),
    ] = 300.0,
) -> None:
    """Make the machine match the manifest.

    Shows the plan, then stops, removes, pulls and starts in that order, and
    writes mlxlama.lock. Stopping servers and removing models needs --yes
    when there is no terminal to ask on.
    """
    from mlx_lama.cli._progress import ApplyReporter
    from mlx_lama.cli._workspace import load_workspace, observe_and_warn, quiet_hub_logging
    from mlx_lama.orchestrator.apply import ApplyContext, apply_plan
    from mlx_lama.orchestrator.engines import require_engines
    from mlx_lama.orchestrator.filelock import apply_lock
    from mlx_lama.orchestrator.plan import PlanOptions, make_plan
    from mlx_lama.schema.lockfile import check_lock_matches

    def waiting() -> None:
        typer.echo("waiting for another mlx-lama apply to finish...", err=True)

    with apply_lock(on_wait=waiting):
        workspace = load_workspace(file)
        require_engines(workspace.manifest)
        if locked:
            check_lock_matches(workspace.manifest, workspace.lock, workspace.lock_path)
        desired = workspace.desired()
        observed = observe_and_warn(workspace, desired)
        plan = make_plan(desired, observed, PlanOptions(prune=prune))
        typer.echo(plan.render(), nl=False)
        if dry_run or plan.empty:
            if plan.empty and not locked:
                _refresh_lock(workspace)
            return
        destructive = [a for a in plan.actions if a.kind.destructive]
        allowed = yes or not destructive or _confirm(len(destructive))
        context = ApplyContext(
            manifest=workspace.manifest,
            manifest_path=workspace.manifest_path,
            lock=workspace.lock,
            desired=desired,
            observed=observed,
            cache_dir=workspace.cache_dir,
            write_lock=not locked,
        )
        quiet_hub_logging()
        with ApplyReporter() as reporter:
            result = apply_plan(
                plan, context, reporter=reporter, destructive_ok=allowed, ready_timeout=timeout
            )
    for action in result.refused:
        typer.echo(f"refused: {action.kind.value} {action.target} (not confirmed)", err=True)
    if result.refused:
        typer.echo("Rerun with --yes to stop servers and remove models.", err=True)
    typer.echo(result.summary())
    if not result.ok:
        failed = ", ".join(f"{o.action.kind.value} {o.action.target}" for o in result.failures)
        if failed:
            typer.echo(f"Failed: {failed}", err=True)
        raise typer.Exit(1)


def _confirm(count: int) -> bool:
    """Ask on a terminal; without one, destructive actions are refused."""
    if not sys.stdin.isatty():
        return False
    noun = (
        "action stops a server or deletes files"
        if count == 1
        else ("actions stop servers or delete files")
    )
    return typer.confirm(f"{count} {noun}. Go ahead?", default=False, err=True)


def _refresh_lock(workspace: Workspace) -> None:
    """Drop lock entries for models the manifest no longer has (no hub access)."""
    from mlx_lama.schema.lockfile import lockable_names, save_lock

    trimmed = workspace.lock.with_models((), keep=lockable_names(workspace.manifest))
    if trimmed != workspace.lock:
        save_lock(workspace.lock_path, trimmed)
