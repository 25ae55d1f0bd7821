"""What every command shares: the ``-f`` option, manifest loading, error handling.

Only the CLI turns exceptions into messages and exit codes; this is where.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, NoReturn, ParamSpec, TypeVar

import typer

from mlx_lama.errors import MlxLamaError

P = ParamSpec("P")
R = TypeVar("R")

ManifestFile = Annotated[
    Path | None,
    typer.Option(
        "--file",
        "-f",
        help="Manifest to use (default: $MLX_LAMA_MANIFEST, ./mlxlama.toml upward, "
        "~/.mlx-lama/mlxlama.toml).",
        dir_okay=True,
        show_default=False,
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ReadyTimeout = Annotated[
    float,
    typer.Option("--timeout", help="Seconds a starting model server gets to answer.", min=1),
]
DEFAULT_READY_TIMEOUT = 300.0


def debug_enabled() -> bool:
    return os.environ.get("MLX_LAMA_DEBUG", "") not in ("", "0", "false", "no")


def fail(error: MlxLamaError) -> typer.Exit:
    """Print ``error`` on stderr and return the Exit to raise."""
    typer.echo(f"error: {error}", err=True)
    return typer.Exit(error.exit_code)


def handles_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Decorate a command so MlxLamaError becomes a one-line message and an exit code,
    and Ctrl-C ends the process at once (see :func:`exit_interrupted`).

    With MLX_LAMA_DEBUG=1 the exception propagates with its traceback.
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except MlxLamaError as error:
            if debug_enabled():
                raise
            raise fail(error) from None
        except KeyboardInterrupt:
            exit_interrupted()

    return wrapper


def exit_interrupted() -> NoReturn:
    """Say so and leave now, with the shell's code for SIGINT (130).

    Not sys.exit: huggingface_hub downloads on pool threads that Python would
    join first, finishing every download before the process ends. Our writes
    are atomic and the apply lock dies with the process, so leaving is safe.
    """
    print("\ninterrupted", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(130)


def plural(count: int, noun: str, plural_noun: str | None = None) -> str:
    return f"{count} {noun if count == 1 else (plural_noun or noun + 's')}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by three spaces, like ``ollama list``."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = []
    for row in (headers, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)


def is_tty() -> bool:
    return sys.stdout.isatty()
