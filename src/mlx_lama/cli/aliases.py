"""``mlx-lama aliases``: every short name mlx-lama knows, and where each comes from."""

from __future__ import annotations

import json

import typer

from mlx_lama.cli._app import app
from mlx_lama.cli._common import JsonFlag, ManifestFile, format_table, handles_errors


@app.command()
@handles_errors
def aliases(
    file: ManifestFile = None,
    as_json: JsonFlag = False,
    all_layers: bool = typer.Option(
        False, "--all", help="Also show names hidden by a higher layer."
    ),
) -> None:
    """List model aliases and where each comes from.

    Layers, lowest first: the built-in table, ~/.mlx-lama/registry.yaml, and
    the manifest's [aliases]; a higher layer hides the same name below it.
    """
    from mlx_lama.registry import load_registry
    from mlx_lama.schema import find_manifest, load_manifest

    manifest = load_manifest(find_manifest(file).path)
    registry = load_registry(
        manifest_aliases=manifest.aliases, manifest_models=list(manifest.models)
    )
    entries = registry.entries(include_shadowed=all_layers)
    if as_json:
        rows: list[dict[str, str | None]] = []
        for e in entries:
            row: dict[str, str | None] = {"name": e.name, "target": e.target}
            row["source"] = e.source
            row["description"] = e.description
            if all_layers:
                row["hidden_by"] = e.shadowed_by
            rows.append(row)
        typer.echo(json.dumps(rows, indent=2))
        return
    table = [
        (
            e.name,
            e.target,
            f"{e.source} (hidden by {e.shadowed_by})" if e.shadowed_by else e.source,
            e.description,
        )
        for e in entries
    ]
    typer.echo(format_table(("NAME", "TARGET", "SOURCE", "DESCRIPTION"), table))
