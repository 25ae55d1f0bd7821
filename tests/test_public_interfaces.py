"""The gateway uses uvicorn and starlette through their public interfaces only.

import-linter cannot forbid one subpackage of an outside package, so this reads
every import in ``src/`` instead: uvicorn is used as ``uvicorn.Config`` and
``uvicorn.Server`` (the package itself, never its protocols, loops or
lifespan), and no module or name starting with ``_`` is imported from either.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mlx_lama"
WATCHED = ("uvicorn", "starlette")


def private_imports(tree: ast.AST) -> list[str]:
    """The imports in ``tree`` that reach into uvicorn's or starlette's internals."""
    found = []
    for node in ast.walk(tree):
        modules: list[tuple[str, tuple[str, ...]]]
        if isinstance(node, ast.Import):
            modules = [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [(node.module, tuple(alias.name for alias in node.names))]
        else:
            continue
        for module, names in modules:
            parts = module.split(".")
            if parts[0] not in WATCHED:
                continue
            internal = parts[0] == "uvicorn" and len(parts) > 1
            private = any(p.startswith("_") for p in parts) or any(n.startswith("_") for n in names)
            if internal or private:
                found.append(f"{module} {' '.join(names)}".strip())
    return found


def test_no_src_module_imports_uvicorn_or_starlette_internals() -> None:
    offenders = {
        str(path.relative_to(SRC)): hits
        for path in sorted(SRC.rglob("*.py"))
        if (hits := private_imports(ast.parse(path.read_text(encoding="utf-8"))))
    }
    assert offenders == {}


def test_the_check_sees_an_internal_import() -> None:
    code = (
        "import uvicorn\n"
        "from uvicorn.protocols.http import httptools_impl\n"
        "from starlette._utils import is_async_callable\n"
        "from starlette.responses import _private\n"
        "from starlette.responses import Response\n"
    )
    assert private_imports(ast.parse(code)) == [
        "uvicorn.protocols.http httptools_impl",
        "starlette._utils is_async_callable",
        "starlette.responses _private",
    ]
