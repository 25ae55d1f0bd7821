"""The manifest: schema, loader with ``file:line`` errors, and discovery.

Everything that reads ``mlxlama.toml`` goes through here. Nothing in this
package starts processes or touches the model cache. Exports load lazily, so
importing one of its modules stays cheap for callers that never need pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlx_lama.schema.discovery import ManifestLocation, find_manifest
    from mlx_lama.schema.loader import load_manifest, parse_manifest
    from mlx_lama.schema.manifest import (
        BackendSection,
        Defaults,
        Manifest,
        Message,
        ModelEntry,
        Parameters,
        ServerSection,
    )
    from mlx_lama.units import Duration, Size

_EXPORTS = {
    "ManifestLocation": "discovery",
    "find_manifest": "discovery",
    "load_manifest": "loader",
    "parse_manifest": "loader",
    "BackendSection": "manifest",
    "Defaults": "manifest",
    "Manifest": "manifest",
    "Message": "manifest",
    "ModelEntry": "manifest",
    "Parameters": "manifest",
    "ServerSection": "manifest",
    "Duration": "mlx_lama.units",  # a base module every layer may use
    "Size": "mlx_lama.units",
}

__all__ = [
    "BackendSection",
    "Defaults",
    "Duration",
    "Manifest",
    "ManifestLocation",
    "Message",
    "ModelEntry",
    "Parameters",
    "ServerSection",
    "Size",
    "find_manifest",
    "load_manifest",
    "parse_manifest",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    path = module if "." in module else f"{__name__}.{module}"
    return getattr(importlib.import_module(path), name)
