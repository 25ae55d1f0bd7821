"""The ``mlx-lama`` command line: parse, call the library, render. No logic here.

Commands live one per module and register on the shared Typer app.
"""

from __future__ import annotations

import sys

# Registration order is the order --help lists the commands in.
# isort: off
from mlx_lama.cli import serve, plan, apply, lock, listing, validate, aliases, backends
from mlx_lama.cli import settings
from mlx_lama.cli import pull, stop, cp, rm
from mlx_lama.cli import create, show
from mlx_lama.cli import run, launch, logs, top, service

# isort: on
from mlx_lama.cli._app import app
from mlx_lama.cli._common import debug_enabled, exit_interrupted

__all__ = [
    "aliases", "app", "apply", "backends", "cp", "create", "launch", "listing", "lock", "logs",
    "main", "plan", "pull", "rm", "run", "serve", "service", "settings", "show", "stop", "top",
    "validate",
]  # fmt: skip


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        exit_interrupted()
    except Exception as exc:  # a bug, not bad input: say so briefly, trace on request
        if debug_enabled():
            raise
        print(
            f"internal error: {type(exc).__name__}: {exc}\n"
            "Set MLX_LAMA_DEBUG=1 to see the traceback, and please report it.",
            file=sys.stderr,
        )
        sys.exit(1)
