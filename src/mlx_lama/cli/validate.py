"""``mlx-lama validate``: check a manifest and report every problem with its line."""

from __future__ import annotations

import typer

from mlx_lama.cli._app import app
from mlx_lama.cli._common import ManifestFile, handles_errors, plural


@app.command()
@handles_errors
def validate(file: ManifestFile = None) -> None:
    """Check the manifest and report every problem.

    Prints "OK: N models, M aliases" (and ", K remotes" when it has
    [remotes]) (exit 0), or each problem as FILE:LINE:COL: key.path: message
    (hint) on stderr (exit 1).
    """
    from mlx_lama.schema import find_manifest, load_manifest

    location = find_manifest(file)
    manifest = load_manifest(location.path)
    models = plural(len(manifest.models), "model")
    aliases = plural(len(manifest.aliases), "alias", "aliases")
    remotes = f", {plural(len(manifest.remotes), 'remote')}" if manifest.remotes else ""
    typer.echo(f"OK: {models}, {aliases}{remotes} ({location.path})")
