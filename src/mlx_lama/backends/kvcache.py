"""How much memory an engine's model takes: its weight files, and the bound on the
KV caches it keeps (``kv_cache``), as the engines' launch flags and the memory
budget (``orchestrator/memory.py``) count them. Reads file sizes only.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from mlx_lama.backends.base import get_backend, known_backend

if TYPE_CHECKING:
    from mlx_lama.backends.spec import ServerSpec


# The bound on an engine's KV caches (the prompts it keeps for reuse) when neither the
# model nor [defaults] sets kv_cache: as much as the model's weights (some 70,000
# tokens of a 7B or 32B model's cache), at most a tenth of memory, at least 64 MiB.
# Without one, a long agent session grows a server's memory until the machine swaps.
DEFAULT_KV_SHARE = 0.10
MIN_KV_CACHE = 64 * 2**20
WEIGHT_SUFFIXES = (".safetensors", ".npz", ".gguf", ".bin")


def weight_bytes(model_path: Path | None) -> int:
    """The size of the weight files in ``model_path`` (0 without one). Reads only sizes."""
    total = 0
    if model_path is None:
        return 0
    with contextlib.suppress(OSError):
        for item in model_path.iterdir():
            if item.name.endswith(WEIGHT_SUFFIXES):
                with contextlib.suppress(OSError):
                    total += item.stat().st_size
    return total


def kv_cache_bytes(server: ServerSpec) -> int:
    """The bound on ``server``'s KV caches in bytes: its ``kv_cache`` (a share of
    memory resolved on this machine), else the default above; 0 for an engine that
    keeps none (:func:`keeps_kv_caches`)."""
    import psutil

    if not keeps_kv_caches(server.engine):
        return 0
    memory = psutil.virtual_memory().total
    if server.kv_cache is not None:
        return server.kv_cache.resolve(memory)
    return default_kv_bytes(weight_bytes(server.model_path), memory)


def keeps_kv_caches(engine: str) -> bool:
    """Whether ``engine`` keeps prompts' KV caches (an embedding engine keeps none)."""
    if not known_backend(engine):
        return True  # not one of ours (an old run record's): count the default bound
    return get_backend(engine).kv_caches


def default_kv_bytes(weights: int, memory: int) -> int:
    """The default bound above for a model of ``weights`` bytes on a machine with
    ``memory`` bytes. Pure."""
    return max(MIN_KV_CACHE, min(weights, int(memory * DEFAULT_KV_SHARE)))
