"""The manifest's trust boundary: pydantic models that validate ``mlxlama.toml``.

Every table forbids unknown keys and types are strict (``port = "8080"`` is
an error, not a guess). Only the loader uses these, and only when a
manifest's text is new to it; the rest of mlx-lama works with the plain
dataclasses in ``manifest.py``. Checks that span entries live in
``checks.py``.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from mlx_lama.schema.checks import server_url
from mlx_lama.schema.manifest import (
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_KEEP_ALIVE,
    DEFAULT_MEMORY_BUDGET,
    DEFAULT_WEDGE_TIMEOUT,
    MAX_FLUSH_INTERVAL,
    MIN_WEDGE_TIMEOUT,
    BackendType,
    DistributedBackend,
    FilesMode,
    ServeMode,
)
from mlx_lama.schema.units import Duration, Size

Port = Annotated[int, Field(ge=1, le=65535)]
ServerUrl = Annotated[str, AfterValidator(server_url)]


def _flush_interval(value: Duration) -> Duration:
    if not 0 <= value.seconds <= MAX_FLUSH_INTERVAL.seconds:
        raise ValueError(
            f'must be from 0 to {MAX_FLUSH_INTERVAL} (for example "3ms"; 0 writes each '
            "token as it comes)"
        )
    return value


FlushInterval = Annotated[Duration, AfterValidator(_flush_interval)]


def _wedge_timeout(value: Duration) -> Duration:
    if value.seconds != 0 and not MIN_WEDGE_TIMEOUT.seconds <= value.seconds < math.inf:
        raise ValueError(
            f'must be 0 (no watchdog) or at least {MIN_WEDGE_TIMEOUT} (for example "60s"): '
            "the time a model server with requests in flight may make no progress before "
            "it is restarted"
        )
    return value


WedgeTimeout = Annotated[Duration, AfterValidator(_wedge_timeout)]


def _one_or_many(value: object) -> object:
    # Modelfiles repeat `PARAMETER stop` and LICENSE; in TOML one string is the common slip.
    return [value] if isinstance(value, str) else value


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Parameters(_Table):
    """Sampling and context settings, under Ollama's Modelfile PARAMETER names."""

    temperature: Annotated[float, Field(ge=0)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    num_predict: Annotated[int, Field(ge=-2)] | None = None
    num_ctx: Annotated[int, Field(ge=1)] | None = None
    stop: Annotated[list[str], BeforeValidator(_one_or_many)] | None = None
    seed: int | None = None
    repeat_penalty: Annotated[float, Field(ge=0)] | None = None
    repeat_last_n: Annotated[int, Field(ge=-1)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None


class Message(_Table):
    """A seeded conversation turn (Modelfile MESSAGE)."""

    role: Literal["system", "user", "assistant"]
    content: str


class ServerSection(_Table):
    """``[server]``: the gateway that ``mlx-lama serve`` runs."""

    host: str = "127.0.0.1"
    port: Port = 11434
    keep_alive: Duration = DEFAULT_KEEP_ALIVE
    max_loaded: Annotated[int, Field(ge=1)] = 3
    memory_budget: Size = DEFAULT_MEMORY_BUDGET
    api_key: str | None = None
    origins: list[str] = Field(default_factory=list)
    flush_interval: FlushInterval = DEFAULT_FLUSH_INTERVAL
    wedge_timeout: WedgeTimeout = DEFAULT_WEDGE_TIMEOUT


class Defaults(_Table):
    """``[defaults]``: what a model entry gets for the keys it leaves out."""

    backend: str = "mlx-lm"
    serve: ServeMode = "on-demand"
    keep_alive: Duration | None = None
    parameters: Parameters = Parameters()


class BackendSection(_Table):
    """``[backends.NAME]``: a named engine configuration models can refer to.

    ``type`` may be left out when NAME is itself a built-in backend, which is
    how a manifest passes extra flags to every mlx-lm server, say.
    """

    type: BackendType | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)


class ModelEntry(_Table):
    """``[models.NAME]``: one model to keep on disk and maybe serve, or an external server's."""

    repo: str | None = None
    path: str | None = None
    url: ServerUrl | None = None
    revision: str | None = None
    backend: str | None = None
    serve: ServeMode | None = None
    port: Port | None = None
    keep_alive: Duration | None = None
    pin: bool = False
    system: str | None = None
    template: str | None = None
    adapter: str | None = None
    license: Annotated[list[str], BeforeValidator(_one_or_many)] = Field(default_factory=list)
    messages: list[Message] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    parameters: Parameters = Parameters()
    hosts: list[str] = Field(default_factory=list)
    hostfile: str | None = None
    distributed: DistributedBackend | None = None
    pipeline: bool = False
    files: FilesMode = "check"
    ring_port: Port | None = None


class RemoteSection(_Table):
    """``[remotes.NAME]``: another gateway whose models ours routes to."""

    url: ServerUrl
    api_key: str | None = None
    models: list[str] = Field(default_factory=list)


class Manifest(_Table):
    """A whole ``mlxlama.toml``."""

    version: Literal[1] = 1  # a file must say it: the loader refuses one that does not
    server: ServerSection = ServerSection()
    defaults: Defaults = Defaults()
    aliases: dict[str, str] = Field(default_factory=dict)
    backends: dict[str, BackendSection] = Field(default_factory=dict)
    models: dict[str, ModelEntry] = Field(default_factory=dict)
    remotes: dict[str, RemoteSection] = Field(default_factory=dict)
