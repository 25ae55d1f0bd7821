"""Find the manifest a command should use.

Order: ``-f FILE``, else ``$MLX_LAMA_MANIFEST``, else ``./mlxlama.toml``
searching upward from the working folder (like git), else the global
``$MLX_LAMA_HOME/mlxlama.toml``, which is created, valid and empty, the first
time it is needed. Called by the CLI before it loads anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mlx_lama import paths
from mlx_lama.errors import ManifestNotFoundError

ManifestSource = Literal["flag", "env", "project", "global"]

EMPTY_MANIFEST = """\
# mlx-lama manifest: the models this machine keeps on disk and serves.
# Add models under [models]; mlxlama.toml.example shows every key.
version = 1
"""


@dataclass(frozen=True, slots=True)
class ManifestLocation:
    """A manifest file and how it was found."""

    path: Path
    source: ManifestSource

    @property
    def source_str(self) -> str:
        return {
            "flag": "from -f",
            "env": "from MLX_LAMA_MANIFEST",
            "project": "project manifest",
            "global": "global manifest",
        }[self.source]


def find_manifest(
    explicit: Path | str | None = None, *, cwd: Path | None = None, create: bool = True
) -> ManifestLocation:
    """Locate the manifest to use; see the module docstring for the order.

    A path given with ``-f`` or ``MLX_LAMA_MANIFEST`` must exist (a folder
    means the ``mlxlama.toml`` inside it). The global manifest is created when
    missing unless ``create`` is false.
    """
    if explicit is not None and str(explicit) != "":
        return ManifestLocation(_existing(Path(explicit), "-f"), "flag")
    from_env = os.environ.get("MLX_LAMA_MANIFEST")
    if from_env:
        return ManifestLocation(_existing(Path(from_env), "MLX_LAMA_MANIFEST"), "env")
    start = (cwd or Path.cwd()).absolute()
    for folder in (start, *start.parents):
        candidate = folder / paths.MANIFEST_NAME
        if candidate.is_file():
            return ManifestLocation(candidate, "project")
        if os.path.lexists(candidate):  # there, but no file: never fall back past it
            raise ManifestNotFoundError(
                f"{candidate} is {_what(candidate)}, not a manifest file",
                hint="make it the project's manifest file, or move it away to use the "
                "global one (~/.mlx-lama/mlxlama.toml)",
            )
    path = paths.global_manifest()
    if create and not path.exists():
        write_empty_manifest(path)
    return ManifestLocation(path, "global")


def write_empty_manifest(path: Path) -> None:
    """Create a valid, empty manifest at ``path`` without clobbering one that appears meanwhile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with path.open("x", encoding="utf-8") as handle:
            handle.write(EMPTY_MANIFEST)
    except FileExistsError:
        pass


def _what(path: Path) -> str:
    """What stands at ``path`` instead of a file, in words."""
    if path.is_dir():
        return "a folder"
    if path.is_symlink():
        return "a link that leads to no file (it dangles, or loops)"
    return "not a regular file"


def _existing(path: Path, via: str) -> Path:
    path = path.expanduser()
    if path.is_dir():
        path = path / paths.MANIFEST_NAME
    if not path.is_file():
        raise ManifestNotFoundError(
            f"no manifest at {path} (given by {via})",
            hint=f"check the path, or create it containing `version = 1`; without {via}, "
            "mlx-lama looks for ./mlxlama.toml and then uses ~/.mlx-lama/mlxlama.toml",
        )
    return path
