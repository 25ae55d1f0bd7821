"""Every location mlx-lama reads or writes, computed at call time.

``MLX_LAMA_HOME`` (default ``~/.mlx-lama``) holds mlx-lama's own state. Model
files live in the Hugging Face cache, whose location is huggingface_hub's
business (``HF_HOME``, ``HF_HUB_CACHE``): we ask it, never guess.
"""

from __future__ import annotations

import os
from pathlib import Path

MANIFEST_NAME = "mlxlama.toml"
LOCK_NAME = "mlxlama.lock"


def home() -> Path:
    """mlx-lama's state folder: ``$MLX_LAMA_HOME``, else ``~/.mlx-lama``."""
    configured = os.environ.get("MLX_LAMA_HOME")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".mlx-lama"


def config_file() -> Path:
    return home() / "config.yaml"


def registry_file() -> Path:
    return home() / "registry.yaml"


def global_manifest() -> Path:
    return home() / MANIFEST_NAME


def run_dir() -> Path:
    return home() / "run"


def logs_dir() -> Path:
    return home() / "logs"


def apply_lock() -> Path:
    return home() / "apply.lock"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache, as huggingface_hub resolves it."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)
