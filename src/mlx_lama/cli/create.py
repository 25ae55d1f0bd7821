"""``mlx-lama create NAME -f Modelfile``: a manifest model from an Ollama Modelfile.

Parses the Modelfile, adds ``[models."NAME"]`` (or replaces the Modelfile keys
of an existing one, as ``ollama create`` overwrites a model), then settles the
model: pulls it if missing and starts or stops its server as the manifest says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlx_lama.cli._app import app
from mlx_lama.cli._common import handles_errors
from mlx_lama.errors import MlxLamaError

ModelfilePath = Annotated[
    Path,
    typer.Option("--file", "-f", help="The Modelfile to read.", dir_okay=False, show_default=True),
]
ManifestOption = Annotated[
    Path | None,
    typer.Option(
        "--manifest",
        help="Manifest to add the model to (default: $MLX_LAMA_MANIFEST, ./mlxlama.toml "
        "upward, ~/.mlx-lama/mlxlama.toml).",
        dir_okay=True,
        show_default=False,
    ),
]


@app.command()
@handles_errors
def create(
    name: Annotated[str, typer.Argument(help="Name of the model to create, e.g. mine:latest.")],
    file: ModelfilePath = Path("Modelfile"),
    manifest: ManifestOption = None,
) -> None:
    """Create a model from a Modelfile (FROM, PARAMETER, SYSTEM, TEMPLATE, ...).

    FROM names a folder of MLX weights (relative to the Modelfile), a Hugging
    Face repo id, or a model of the manifest to build on. An existing NAME has
    its Modelfile settings replaced; its serve, port, keep_alive, pin, args and
    env stay.
    """
    from mlx_lama.cli._handoff import settle
    from mlx_lama.names import check_model_name
    from mlx_lama.orchestrator.entries import create_entry
    from mlx_lama.registry import InvalidModelNameError
    from mlx_lama.schema import find_manifest
    from mlx_lama.schema.modelfile import parse_modelfile

    if (problem := check_model_name(name)) is not None:
        raise InvalidModelNameError(problem)
    manifest_path = find_manifest(manifest).path
    typer.echo("gathering model components", err=True)
    parsed = parse_modelfile(_read_modelfile(file), str(file))
    typer.echo("writing manifest", err=True)
    key = create_entry(manifest_path, name, parsed, file.absolute().parent)
    settle(manifest_path, [key])
    typer.echo("success", err=True)


def _read_modelfile(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MlxLamaError(
            f"no Modelfile at {path}", hint="name one with -f PATH, or write ./Modelfile"
        ) from None
    except UnicodeDecodeError:
        raise MlxLamaError(
            f"{path} is not UTF-8 text", hint="save the Modelfile as UTF-8"
        ) from None
    except OSError as exc:
        raise MlxLamaError(f"cannot read {path}: {exc.strerror or exc}") from None
