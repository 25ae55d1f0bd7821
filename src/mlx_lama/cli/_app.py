"""The Typer application every command module registers on.

Kept apart from ``cli/__init__.py`` so command modules can import ``app``
without a cycle. Nothing here imports mlx, mlx_lm, transformers or uvicorn.
"""

from __future__ import annotations

from typing import Annotated

import typer

from mlx_lama import __version__

app = typer.Typer(
    name="mlx-lama",
    help=(
        "Run local LLMs on MLX the Ollama way, from a declarative manifest (mlxlama.toml).\n\n"
        "The manifest is found with -f FILE, else $MLX_LAMA_MANIFEST, else ./mlxlama.toml "
        "(searching upward), else ~/.mlx-lama/mlxlama.toml."
    ),
    no_args_is_help=True,
    rich_markup_mode=None,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    """The version, the Python this mlx-lama runs on (a tool install's own), and where
    its engines' environments live."""
    if not value:
        return
    import platform
    import sys

    from mlx_lama.backends.interpreters import engines_dir

    folder = engines_dir()
    installed = sorted(config.parent.name for config in folder.glob("*/pyvenv.cfg"))
    engines = ", ".join(installed) if installed else "none yet: `mlx-lama install vllm-mlx`"
    typer.echo(f"mlx-lama {__version__}")
    typer.echo(f"python   {sys.executable} ({platform.python_version()})")
    typer.echo(f"engines  {folder} ({engines})")
    raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            help="Show the version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """Run local LLMs on MLX the Ollama way, from a declarative manifest."""
