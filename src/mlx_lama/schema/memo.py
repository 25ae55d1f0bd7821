"""Remember manifests that validated, so an unchanged manifest loads without pydantic.

``load_manifest`` asks :func:`recall` first; only a miss pays for validation
(pydantic's import alone is ~200 ms here, more than ``plan`` may take). An
entry is keyed by the file's bytes and a stamp of the schema code, so an
edit to either is always validated afresh; only manifests that passed are
remembered. One small JSON file per manifest path under
``$MLX_LAMA_HOME/cache/manifests``. Failing to read or write it is never an
error: the manifest is then simply validated.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from functools import cache
from pathlib import Path

from mlx_lama import __version__, paths
from mlx_lama.atomic import atomic_write_text
from mlx_lama.schema.manifest import Manifest


def recall(source: Path, raw: bytes, context: str = "") -> Manifest | None:
    """The remembered manifest for exactly these bytes (and ``context``: what else its
    validation depended on), without the user's settings, or None."""
    try:
        entry = json.loads(_entry_path(source).read_text(encoding="utf-8"))
        if entry.get("key") != _key(raw, context):
            return None
        return Manifest.from_data(entry["data"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remember(source: Path, raw: bytes, manifest: Manifest, context: str = "") -> None:
    """Store a manifest that just validated (what its file says). Best effort."""
    data = manifest.file_only().to_data()
    entry = {"key": _key(raw, context), "source": str(source), "data": data}
    with contextlib.suppress(OSError):
        atomic_write_text(_entry_path(source), json.dumps(entry, allow_nan=False))


def _entry_path(source: Path) -> Path:
    where = hashlib.sha256(str(source.absolute()).encode()).hexdigest()[:24]
    return paths.home() / "cache" / "manifests" / f"{where}.json"


def _key(raw: bytes, context: str) -> str:
    stamp = f"{_code_stamp()}\0{context}" if context else _code_stamp()
    return hashlib.sha256(stamp.encode() + b"\0" + raw).hexdigest()


@cache
def _code_stamp() -> str:
    """The version plus size and mtime of every schema module: any edit invalidates."""
    folder = Path(__file__).parent
    parts = [__version__]
    for module in sorted(folder.glob("*.py")):
        stat = module.stat()
        parts.append(f"{module.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return "|".join(parts)
