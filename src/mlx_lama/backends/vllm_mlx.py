"""Launch command for ``vllm-mlx serve`` (an OpenAI-compatible server with batching).

Called through :func:`mlx_lama.backends.base.launch_spec`. Builds argv and env
only: starting, probing and stopping live in ``orchestrator/process.py``.
Pure: no I/O, no logging.

Engine facts (vllm-mlx 0.6): binds "localhost" unless ``--host`` is given;
answers 404 unless a request's ``model`` equals ``--served-model-name``; loads
the model before it listens and exits when loading fails; sends no CORS
headers, so browser pages cannot read its replies. It has no adapter or
chat-template flag, so entries asking for either are refused, not silently
served differently.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlx_lama.backends.base import (
    Backend,
    Capabilities,
    LaunchError,
    LaunchSpec,
    check_passthrough,
    merged_env,
    parameter_flags,
    register_backend,
    required_model_path,
)
from mlx_lama.backends.interpreters import engine_program
from mlx_lama.backends.kvcache import kv_cache_bytes

if TYPE_CHECKING:
    from mlx_lama.backends.spec import ServerSpec

# Manifest parameter -> vllm-mlx default-sampling flag (applied to every request
# that does not set its own value).
PARAMETER_FLAGS: tuple[tuple[str, str], ...] = (
    ("temperature", "--default-temperature"),
    ("top_p", "--default-top-p"),
    ("top_k", "--default-top-k"),
    ("min_p", "--default-min-p"),
    ("presence_penalty", "--default-presence-penalty"),
    ("repeat_penalty", "--default-repetition-penalty"),
    ("num_predict", "--max-tokens"),
)

# ``--max-tokens`` above this also needs ``--max-request-tokens`` (vllm-mlx exits otherwise).
DEFAULT_MAX_REQUEST_TOKENS = 32768

MANAGED_FLAGS: tuple[str, ...] = ("--host", "--port", "--served-model-name")

READY_TIMEOUT = 600.0  # loads and warms up before it listens


@register_backend
class VllmMlxBackend(Backend):
    """``vllm-mlx serve``: continuous batching, vision and embeddings on MLX."""

    name = "vllm-mlx"
    python_packages = ("vllm_mlx",)
    distribution = "vllm-mlx"
    binary_names = ("vllm-mlx",)
    service_ports = (8000,)
    module_command = ("vllm_mlx.cli", "serve")
    own_environment = True  # PyTorch and its own pinned mlx-lm stay out of mlx-lama's
    binary_command = ("serve",)

    def capabilities(self) -> Capabilities:
        return Capabilities(
            chat=True,
            completion=True,
            # It embeds only with a second model (--embedding-model) beside the chat
            # one; an embedding model of its own runs on mlx-embeddings.
            embeddings=False,
            vision=True,
            continuous_batching=True,
            structured_output=True,  # its guided decoding
        )

    def serve(self, server: ServerSpec, port: int) -> LaunchSpec:
        """``python -m vllm_mlx.cli serve PATH --host H --port P --served-model-name NAME ...``
        (without PyTorch, see ``interpreters.py``).

        ``--offline`` keeps it from ever reaching the Hub; ``kv_cache`` goes to
        ``--cache-memory-mb``. ``server.args`` come last, so they win over mapped
        parameters.
        """
        if server.adapter is not None:
            raise LaunchError(
                f"server {server.name!r}: vllm-mlx cannot load adapters",
                hint="use backend 'mlx-lm' for this model, or drop `adapter`",
            )
        if server.template is not None:
            raise LaunchError(
                f"server {server.name!r}: vllm-mlx has no option for a custom chat template",
                hint="use backend 'mlx-lm' for this model, or drop `template`",
            )
        argv = self.launcher(
            server,
            required_model_path(server),
            "--host",
            server.host,
            "--port",
            str(port),
            "--served-model-name",
            server.name,
            "--offline",
            "--cache-memory-mb",
            str(max(1, kv_cache_bytes(server) // 2**20)),
        )
        argv += parameter_flags(server.parameters, PARAMETER_FLAGS)
        num_predict = dict(server.parameters).get("num_predict")
        if isinstance(num_predict, int) and num_predict > DEFAULT_MAX_REQUEST_TOKENS:
            argv += ("--max-request-tokens", str(num_predict))
        argv += check_passthrough(server, MANAGED_FLAGS)
        return LaunchSpec(
            argv=engine_program(argv),  # without PyTorch: 4 s and 600 MB less per start
            env=merged_env(server),
            host=server.host,
            port=port,
            served_model=server.name,
            ready_timeout=READY_TIMEOUT,
            # Without continuous batching it answers a second request at once with
            # "route is busy" (an error in a 200 stream): one at a time, then.
            concurrency=None if "--continuous-batching" in argv else 1,
        )
