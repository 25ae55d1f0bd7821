"""The ``mlx-lama`` command line: parse, call the library, render. No logic here.

Commands live one per module and register on the shared Typer app.
"""

from __future__ import annotations

import sys

from mlx_lama.cli import aliases, apply, listing, lock, plan, validate
from mlx_lama.cli._app import app
from mlx_lama.cli._common import debug_enabled

__all__ = ["aliases", "app", "apply", "listing", "lock", "main", "plan", "validate"]


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a bug, not bad input: say so briefly, trace on request
        if debug_enabled():
            raise
        print(
            f"internal error: {type(exc).__name__}: {exc}\n"
            "Set MLX_LAMA_DEBUG=1 to see the traceback, and please report it.",
            file=sys.stderr,
        )
        sys.exit(1)
