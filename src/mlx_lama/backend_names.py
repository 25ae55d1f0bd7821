"""The built-in backend names, known to the manifest and to the user's settings alike.

A base module so that :mod:`mlx_lama.schema` (which validates ``backend = ...``) and
:mod:`mlx_lama.config` (which validates ``default_backend``) share one list without
importing each other. Names only; the engines themselves live in :mod:`mlx_lama.backends`.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

BackendType = Literal["mlx-lm", "vllm-mlx", "mlx-embeddings", "external"]
BUILTIN_BACKENDS: Final[tuple[str, ...]] = get_args(BackendType)
# The backend of a model whose entry, [defaults] and user settings all name none.
DEFAULT_BACKEND: Final = "mlx-lm"
# The backend of an embedding model (``kind = "embedding"``) whose entry names none:
# the chat engines cannot serve one, so [defaults] and the user's default do not apply.
EMBEDDING_BACKEND: Final = "mlx-embeddings"

# How the ranks of a model served across several Macs talk (MLX distributed): TCP
# ``ring``, ``mpi``, or ``jaccl`` (RDMA over Thunderbolt 5, MLX's fastest; each host
# reaches every other over its own cable) and ``jaccl-ring`` (each only its neighbours).
DistributedBackend = Literal["ring", "mpi", "jaccl", "jaccl-ring"]
# The ones that need a hostfile naming each host's RDMA devices (hosts alone cannot say).
RDMA_BACKENDS: Final[tuple[str, ...]] = ("jaccl", "jaccl-ring")
