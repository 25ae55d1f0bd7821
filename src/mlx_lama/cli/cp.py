"""``mlx-lama cp SOURCE DESTINATION``: another name for a model, as an alias."""

from __future__ import annotations

from typing import Annotated

import typer

from mlx_lama.cli._app import app
from mlx_lama.cli._common import ManifestFile, handles_errors


@app.command()
@handles_errors
def cp(
    source: Annotated[
        str, typer.Argument(help="A model or alias of the manifest.", metavar="SOURCE")
    ],
    destination: Annotated[str, typer.Argument(help="The new name.", metavar="DESTINATION")],
    file: ManifestFile = None,
) -> None:
    """Give a model another name: adds DESTINATION = SOURCE under [aliases].

    Like `ollama cp`, but nothing is copied: the alias names the same files
    and the same server, and `mlx-lama rm DESTINATION` removes only the name.
    An existing alias called DESTINATION is pointed at SOURCE instead.
    """
    from mlx_lama.cli._handoff import settle
    from mlx_lama.schema import editor, find_manifest

    path = find_manifest(file).path
    editor.set_alias(path, destination, source)
    settle(path, [])
    typer.echo(f"copied '{source}' to '{destination}'")
