"""``mlx-lama rm MODEL...``: stop a model's server, drop it from the manifest, free its files."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from mlx_lama.cli._app import app
from mlx_lama.cli._common import ManifestFile, handles_errors

if TYPE_CHECKING:
    from mlx_lama.schema.manifest import Manifest


@app.command()
@handles_errors
def rm(
    models: Annotated[
        list[str],
        typer.Argument(
            help="Models (or aliases) to remove.", metavar="MODEL...", show_default=False
        ),
    ],
    file: ManifestFile = None,
) -> None:
    """Remove models: stop their servers, take them out of the manifest, delete their files.

    The aliases that lead to a model go with it; naming an alias removes only
    the alias, as `ollama rm` does for a copied name. The files are deleted
    only when mlx-lama downloaded them and nothing else claims them: no other
    model in this manifest, no other project's manifest or lock, no running
    server of another project. Files another tool put in the Hugging Face
    cache stay. Every name is checked before anything is removed.
    """
    from mlx_lama import paths
    from mlx_lama.cli._handoff import settle
    from mlx_lama.humanize import size_str
    from mlx_lama.orchestrator.entries import free_removed, remove_entry
    from mlx_lama.orchestrator.projects import project_key
    from mlx_lama.schema import editor, find_manifest, load_manifest

    path = find_manifest(file).path
    manifest = load_manifest(path)
    targets = [_target(manifest, name, str(path)) for name in models]
    for name, (key, is_alias) in zip(models, targets, strict=True):
        if is_alias:
            editor.remove_alias(path, key)
            settle(path, [])
            typer.echo(f"deleted '{name}'")
            continue
        removed = remove_entry(path, key)
        settle(path, [key])  # its server stops before its files go
        result = free_removed(removed, paths.hf_hub_cache(), project=project_key(path))
        if result.kept_because is not None:
            typer.echo(f"kept its files: {result.kept_because}", err=True)
        elif result.repo is not None:
            typer.echo(f"freed {size_str(result.freed)} ({result.repo})", err=True)
        if removed.aliases:
            typer.echo(f"removed its aliases: {', '.join(removed.aliases)}", err=True)
        typer.echo(f"deleted '{name}'")


def _target(manifest: Manifest, name: str, where: str) -> tuple[str, bool]:
    """(manifest key, whether it is an alias) for ``name``; ManifestEditError when neither."""
    from mlx_lama.schema import editor

    key = editor.find_model_key(manifest, name)
    if key is not None:
        return key, False
    alias = editor.find_alias_key(manifest, name)
    if alias is not None:
        return alias, True
    raise editor.ManifestEditError(
        f"model '{name}' not found in {where}", hint="`mlx-lama list` shows the models"
    )
