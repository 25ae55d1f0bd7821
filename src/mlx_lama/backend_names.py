"""The built-in backend names, known to the manifest and to the user's settings alike.

A base module so that :mod:`mlx_lama.schema` (which validates ``backend = ...``) and
:mod:`mlx_lama.config` (which validates ``default_backend``) share one list without
importing each other. Names only; the engines themselves live in :mod:`mlx_lama.backends`.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

BackendType = Literal["mlx-lm", "vllm-mlx", "external"]
BUILTIN_BACKENDS: Final[tuple[str, ...]] = get_args(BackendType)
# The backend of a model whose entry, [defaults] and user settings all name none.
DEFAULT_BACKEND: Final = "mlx-lm"
