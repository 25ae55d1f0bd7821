"""Which engines a manifest needs, and whether this machine can launch them.

Called by ``plan`` and ``apply`` before anything else, so a manifest that
serves a model on an engine that is not installed fails up front with the
install command, instead of half-way through an apply.
"""

from __future__ import annotations

from collections import defaultdict

from mlx_lama.backends.base import missing_backends
from mlx_lama.schema.manifest import Manifest


def served_engines(manifest: Manifest) -> dict[str, list[str]]:
    """``{engine: [model names]}`` for every model the manifest serves. Pure."""
    uses: dict[str, list[str]] = defaultdict(list)
    for name in sorted(manifest.models):
        if manifest.serve_mode(name) == "never":
            continue
        uses[manifest.backend_type(manifest.backend_of(name))].append(name)
    return dict(uses)


def require_engines(manifest: Manifest) -> None:
    """Raise BackendMissingError when a served model's engine cannot be launched here."""
    problem = missing_backends(served_engines(manifest))
    if problem is not None:
        raise problem
