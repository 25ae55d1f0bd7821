"""Launch command for embedding models: mlx-lama's small server over ``mlx-embeddings``.

Called through :func:`mlx_lama.backends.base.launch_spec`. Builds argv and env
only. Pure (no I/O, no logging).

``mlx-embeddings`` (BERT, XLM-RoBERTa, ModernBERT, Qwen3 and Gemma 3 embedding
models on MLX) has no HTTP server of its own, and vllm-mlx serves one only beside
a chat model, so ``embedding_server.py`` (next to this file) is that server: the
OpenAI ``/v1/embeddings`` endpoint the gateway speaks to every engine, plus
Ollama's ``truncate``. It runs in the engine's own environment (``mlx-lama install
mlx-embeddings``: mlx-embeddings brings mlx-vlm and its dependencies, which stay
out of mlx-lama's), where mlx-lama is not installed, so it imports nothing of ours.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mlx_lama.backends.base import (
    Backend,
    Capabilities,
    LaunchError,
    LaunchSpec,
    check_passthrough,
    merged_env,
    register_backend,
    required_model_path,
)
from mlx_lama.backends.interpreters import engine_program

if TYPE_CHECKING:
    from mlx_lama.backends.spec import ServerSpec

SERVER_PROGRAM = Path(__file__).with_name("embedding_server.py")
MANAGED_FLAGS: tuple[str, ...] = ("--model", "--host", "--port", "--served-model-name")
READY_TIMEOUT = 300.0


@register_backend
class MlxEmbeddingsBackend(Backend):
    """Embedding models (``kind = "embedding"``) on mlx-embeddings."""

    name = "mlx-embeddings"
    python_packages = ("mlx_embeddings",)
    distribution = "mlx-embeddings"
    own_environment = True  # it brings mlx-vlm, transformers and OpenCV
    kv_caches = False  # each request is one forward pass; nothing is kept
    program_file = SERVER_PROGRAM

    def capabilities(self) -> Capabilities:
        return Capabilities(chat=False, completion=False, embeddings=True)

    def serve(self, server: ServerSpec, port: int) -> LaunchSpec:
        """``PYTHON -c engine_script(embedding_server.py) --model PATH --host H --port P
        --served-model-name NAME ARGS``, with the Python :meth:`Backend.launcher`
        picks (the engine environment's, else mlx-lama's when mlx-embeddings is here)."""
        if server.adapter is not None or server.template is not None:
            raise LaunchError(
                f"server {server.name!r}: an embedding model takes no adapter or template",
                hint="drop `adapter` and `template` from its entry",
            )
        argv = self.launcher(
            server,
            "--model",
            required_model_path(server),
            "--host",
            server.host,
            "--port",
            str(port),
            "--served-model-name",
            server.name,
        )
        argv += check_passthrough(server, MANAGED_FLAGS)
        return LaunchSpec(
            argv=engine_program(argv),  # without PyTorch, as the other engines
            env=merged_env(server),
            host=server.host,
            port=port,
            served_model=server.name,
            ready_timeout=READY_TIMEOUT,
            answers="embedding",
        )
