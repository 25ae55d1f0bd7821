"""``mlx-lama plan``: show what ``apply`` would change, and change nothing."""

from __future__ import annotations

from typing import Annotated

import typer

from mlx_lama.cli._app import app
from mlx_lama.cli._common import JsonFlag, ManifestFile, handles_errors

Prune = Annotated[
    bool,
    typer.Option(
        "--prune",
        help="Also remove cached models this project pulled that no project declares any more.",
    ),
]
RemoveOrphans = Annotated[
    bool,
    typer.Option(
        "--remove-orphans",
        help="Also stop servers whose project's manifest is gone (other projects' servers "
        "are never touched).",
    ),
]


@app.command()
@handles_errors
def plan(
    file: ManifestFile = None,
    prune: Prune = False,
    remove_orphans: RemoveOrphans = False,
    detailed_exitcode: Annotated[
        bool,
        typer.Option(
            "--detailed-exitcode", help="Exit 2 when changes are pending (0: none, 1: error)."
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Show what apply would change, changing nothing.

    Each line is + pull/start, - stop/remove or ~ restart, with the reason.
    Only this project's servers are planned for; notes below the plan name
    orphans (servers whose manifest is gone) and the models --prune keeps.
    External servers and [remotes] that do not answer are warned about.
    """
    from mlx_lama.cli._workspace import load_workspace, plan_and_warn, warn_unanswering_remotes
    from mlx_lama.orchestrator.engines import require_engines
    from mlx_lama.orchestrator.plan import PlanOptions

    workspace = load_workspace(file)
    require_engines(workspace.manifest)
    options = PlanOptions(prune=prune, remove_orphans=remove_orphans)
    result = plan_and_warn(workspace, options).plan
    warn_unanswering_remotes(workspace.manifest)
    typer.echo(result.to_json() if as_json else result.render(), nl=as_json)
    if detailed_exitcode and not result.empty:
        raise typer.Exit(2)
