"""How much memory a served model is expected to hold, and how much the models may.

One place for both, read by the scheduler (before a start: does it fit beside
what is loaded?), by ``plan`` (will it ever fit?) and by ``show``. A server's
estimate is its weight files times a small factor, the bound on its KV caches
(``kv_cache``, ``backends.kvcache.kv_cache_bytes``) and a margin for the runtime;
the budget is ``[server] memory_budget``, whose default on a Mac is no more than
its GPU may wire (``machine.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mlx_lama.backends.kvcache import (
    default_kv_bytes,
    keeps_kv_caches,
    kv_cache_bytes,
    weight_bytes,
)
from mlx_lama.backends.spec import ServerSpec
from mlx_lama.humanize import size_str
from mlx_lama.machine import default_budget
from mlx_lama.orchestrator.slots import rank_counts
from mlx_lama.schema.manifest import DEFAULT_MEMORY_BUDGET
from mlx_lama.units import Size

MEMORY_MARGIN = 256 * 2**20  # the runtime and activations beyond weights and caches
WEIGHT_FACTOR = 1.1


def estimate_memory(
    model_path: Path | None, ranks_here: int = 1, ranks: int = 1, kv_cache: int = 0
) -> int:
    """Bytes a server for the model in ``model_path`` is expected to hold here: its
    weight files times a small factor, plus a fixed margin and the bound on its KV
    caches (``kv_cache`` bytes). A model sharded over ``ranks`` ranks,
    ``ranks_here`` of them on this machine, holds that share of the weights and of
    the caches, and a margin per local rank. Reads only file sizes."""
    weights = weight_bytes(model_path)
    share = ranks_here / max(ranks, 1)
    return int((weights * WEIGHT_FACTOR + kv_cache) * share) + MEMORY_MARGIN * ranks_here


@dataclass(frozen=True, slots=True)
class Estimate:
    """What a server is expected to hold here, and of what."""

    total: int
    weights: int  # the weight files on disk (0 before they are)
    kv_cache: int  # the bound on its KV caches


def server_estimate(spec: ServerSpec) -> Estimate:
    """The estimate of ``spec``'s server on this machine."""
    kv = kv_cache_bytes(spec)
    total = estimate_memory(spec.model_path, *rank_counts(spec), kv_cache=kv)
    return Estimate(total, weight_bytes(spec.model_path), kv)


def record_estimate(spec: Mapping[str, object], memory: int) -> int | None:
    """The estimate of a running server from its run record's launch fields (``ps``),
    on a machine with ``memory`` bytes; None for a distributed one (its ranks are
    listed apart) or a record without a model folder."""
    folder = spec.get("model_path")
    if not isinstance(folder, str) or spec.get("distribution"):
        return None
    path = Path(folder)
    bound = spec.get("kv_cache")
    if not keeps_kv_caches(str(spec.get("engine"))):
        kv = 0
    elif isinstance(bound, str):
        kv = Size.parse(bound).resolve(memory)
    else:
        kv = default_kv_bytes(weight_bytes(path), memory)
    return estimate_memory(path, kv_cache=kv)


def budget_bytes(budget: Size, total_memory: int, wired_limit: int | None) -> int:
    """``[server] memory_budget`` in bytes on a machine with ``total_memory`` bytes;
    left at its default, also no more than the GPU may wire (``wired_limit``). Pure."""
    if budget == DEFAULT_MEMORY_BUDGET:
        return default_budget(total_memory, wired_limit)
    return budget.resolve(total_memory)


def fit_warnings(estimates: dict[str, Estimate], budget: int) -> list[str]:
    """One line for each server that could never start under ``budget`` bytes
    (only servers whose weights are on disk: before a pull there is nothing to weigh).
    Pure."""
    return [
        f"model {name!r} needs about {size_str(e.total)} (weights {size_str(e.weights)}, "
        f"KV caches up to {size_str(e.kv_cache)}), more than memory_budget "
        f"{size_str(budget)}: it cannot start; raise memory_budget under [server] or "
        "lower the model's kv_cache"
        for name, e in sorted(estimates.items())
        if e.weights and e.total > budget
    ]
