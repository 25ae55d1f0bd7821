"""``backend = "external"``: an OpenAI-compatible server someone else runs.

An Ollama, LM Studio or another mlx-lama at ``url``. The gateway routes to
it; the reconciler never starts or stops it, only reports whether it answers.
This is where the original design's ``ollama`` backend lives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlx_lama.backends.base import (
    Backend,
    Capabilities,
    Detection,
    LaunchError,
    LaunchSpec,
    register_backend,
)

if TYPE_CHECKING:
    from mlx_lama.backends.spec import ServerSpec


@register_backend
class ExternalBackend(Backend):
    """A server mlx-lama routes to but does not run."""

    name = "external"

    def capabilities(self) -> Capabilities:
        # Whatever the server behind the URL offers; the OpenAI endpoints pass through.
        # Its own business: requests pass through, and its answers are what they are.
        return Capabilities(chat=True, completion=True, embeddings=True, structured_output=True)

    def serve(self, server: ServerSpec, port: int) -> LaunchSpec:
        raise LaunchError(
            f"server {server.name!r} is external: external servers are not started by mlx-lama",
            hint="start it yourself; mlx-lama only routes requests to it",
        )

    def detect(self, *, services: bool = True, probe_timeout: float = 0.2) -> Detection:
        """Always usable: there is nothing to install; each model's URL is probed on its own."""
        return Detection(True, None, None, "per-model url")

    def install_commands(self, *, upgrade: bool = False) -> list[list[str]]:
        return []
