"""The manifest, declared once: plain frozen dataclasses, one per table.

Each field's type, default and, in ``Annotated`` metadata, what it requires
beyond its type (``constraints.py``) are written here and nowhere else:
``validation.py`` generates the pydantic models that validate a manifest's
text from these classes. ``load_manifest`` builds these from data those models
have accepted (or from its memo of such data), so nothing here validates and
importing this module stays cheap: ``plan`` and ``list`` must not pay for
pydantic when the manifest has not changed. ``from_data`` takes the validated
data in plain form, as ``to_data`` writes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Annotated, Any, Final, Literal, cast

from mlx_lama.backend_names import (
    BUILTIN_BACKENDS,
    DEFAULT_BACKEND,
    EMBEDDING_BACKEND,
    BackendType,
    DistributedBackend,
)
from mlx_lama.schema.constraints import Bounds, Check, OneOrMany, server_url
from mlx_lama.units import Duration, Size

SCHEMA_VERSION = 1

ServeMode = Literal["always", "on-demand", "never"]
FilesMode = Literal["check", "shared"]
# What a model does: generate text (chat, completion), or turn text into vectors.
ModelKind = Literal["generate", "embedding"]
# Field metadata of what the loader fills in from the user's settings: no manifest key.
NOT_IN_FILE: Final = "not_in_file"

DEFAULT_KEEP_ALIVE = Duration(300.0)
DEFAULT_FLUSH_INTERVAL = Duration(0.003)
MAX_FLUSH_INTERVAL = Duration(1.0)
DEFAULT_WEDGE_TIMEOUT = Duration(60.0)
MIN_WEDGE_TIMEOUT = Duration(1.0)
DEFAULT_MEMORY_BUDGET = Size(percent=75.0)


def _flush_interval(value: Duration) -> Duration:
    if not 0 <= value.seconds <= MAX_FLUSH_INTERVAL.seconds:
        raise ValueError(
            f'must be from 0 to {MAX_FLUSH_INTERVAL} (for example "3ms"; 0 writes each '
            "token as it comes)"
        )
    return value


def _wedge_timeout(value: Duration) -> Duration:
    if value.seconds != 0 and not MIN_WEDGE_TIMEOUT.seconds <= value.seconds < math.inf:
        raise ValueError(
            f'must be 0 (no watchdog) or at least {MIN_WEDGE_TIMEOUT} (for example "60s"): '
            "the time a model server with requests in flight may make no progress before "
            "it is restarted"
        )
    return value


Port = Annotated[int, Bounds(ge=1, le=65535)]
ServerUrl = Annotated[str, Check(server_url)]


@dataclass(frozen=True, slots=True)
class Parameters:
    """Sampling and context settings, under Ollama's Modelfile PARAMETER names."""

    temperature: Annotated[float, Bounds(ge=0)] | None = None
    top_p: Annotated[float, Bounds(ge=0, le=1)] | None = None
    top_k: Annotated[int, Bounds(ge=0)] | None = None
    min_p: Annotated[float, Bounds(ge=0, le=1)] | None = None
    num_predict: Annotated[int, Bounds(ge=-2)] | None = None
    num_ctx: Annotated[int, Bounds(ge=1)] | None = None
    stop: Annotated[list[str], OneOrMany()] | None = None
    seed: int | None = None
    repeat_penalty: Annotated[float, Bounds(ge=0)] | None = None
    repeat_last_n: Annotated[int, Bounds(ge=-1)] | None = None
    presence_penalty: Annotated[float, Bounds(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Bounds(ge=-2, le=2)] | None = None

    def as_dict(self) -> dict[str, object]:
        """The parameters that are set, in declaration order."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }

    @classmethod
    def from_data(cls, data: dict[str, Any] | None) -> Parameters:
        return cls(**{k: v for k, v in (data or {}).items() if v is not None})


@dataclass(frozen=True, slots=True)
class Message:
    """A seeded conversation turn (Modelfile MESSAGE)."""

    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class ServerSection:
    """``[server]``: the gateway that ``mlx-lama serve`` runs."""

    host: str = "127.0.0.1"
    port: Port = 11434
    keep_alive: Duration = DEFAULT_KEEP_ALIVE
    max_loaded: Annotated[int, Bounds(ge=1)] = 3
    memory_budget: Size = DEFAULT_MEMORY_BUDGET
    api_key: str | None = None
    origins: list[str] = field(default_factory=list)
    flush_interval: Annotated[Duration, Check(_flush_interval)] = DEFAULT_FLUSH_INTERVAL
    wedge_timeout: Annotated[Duration, Check(_wedge_timeout)] = DEFAULT_WEDGE_TIMEOUT

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> ServerSection:
        values = dict(data)
        values["keep_alive"] = Duration.parse(values["keep_alive"])
        values["flush_interval"] = Duration.parse(values["flush_interval"])
        values["wedge_timeout"] = Duration.parse(values["wedge_timeout"])
        values["memory_budget"] = Size.parse(values["memory_budget"])
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Defaults:
    """``[defaults]``: what a model entry gets for the keys it leaves out."""

    backend: str | None = None  # None: the user's default_backend, else DEFAULT_BACKEND
    serve: ServeMode = "on-demand"
    keep_alive: Duration | None = None
    kv_cache: Size | None = None
    parameters: Parameters = Parameters()

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Defaults:
        values = dict(data)
        values["keep_alive"] = _duration(values.get("keep_alive"))
        values["kv_cache"] = _size(values.get("kv_cache"))
        values["parameters"] = Parameters.from_data(values.get("parameters"))
        return cls(**values)


@dataclass(frozen=True, slots=True)
class BackendSection:
    """``[backends.NAME]``: a named engine configuration models can refer to.

    ``type`` may be left out when NAME is itself a built-in backend, which is
    how a manifest passes extra flags to every mlx-lm server, say.
    """

    type: BackendType | None = None
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """``[models.NAME]``: one model to keep on disk and maybe serve, or an external server's."""

    repo: str | None = None
    path: str | None = None
    url: ServerUrl | None = None  # server root of an external model, normalised
    revision: str | None = None
    backend: str | None = None
    kind: ModelKind | None = None  # None: "generate"
    serve: ServeMode | None = None
    port: Port | None = None
    keep_alive: Duration | None = None
    kv_cache: Size | None = None  # the bound on the engine's KV caches
    pin: bool = False
    system: str | None = None
    template: str | None = None
    adapter: str | None = None
    license: Annotated[list[str], OneOrMany()] = field(default_factory=list)  # Modelfile LICENSE
    messages: list[Message] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    parameters: Parameters = Parameters()
    # Sharded over several machines with MLX distributed (rank 0 = hosts[0] serves HTTP).
    hosts: list[str] = field(default_factory=list)
    hostfile: str | None = None  # an mlx.launch JSON hostfile instead of hosts
    distributed: DistributedBackend | None = None  # None: "ring" when hosts are set
    pipeline: bool = False  # pipeline parallel instead of tensor parallel
    files: FilesMode = "check"  # "shared": the model folder is on a volume every host sees
    ring_port: Port | None = None  # first port of the ring (one per rank); None: any free one

    @property
    def is_distributed(self) -> bool:
        return bool(self.hosts) or self.hostfile is not None

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> ModelEntry:
        values = dict(data)
        values["keep_alive"] = _duration(values.get("keep_alive"))
        values["kv_cache"] = _size(values.get("kv_cache"))
        values["messages"] = [Message(**m) for m in values.get("messages", [])]
        values["license"] = list(values.get("license", []))
        values["parameters"] = Parameters.from_data(values.get("parameters"))
        values["hosts"] = list(values.get("hosts", []))
        return cls(**values)


@dataclass(frozen=True, slots=True)
class RemoteSection:
    """``[remotes.NAME]``: another mlx-lama (or Ollama) gateway whose models ours routes to."""

    url: ServerUrl  # the gateway's root, normalised
    api_key: str | None = None  # bearer token the remote gateway asks for
    models: list[str] = field(default_factory=list)  # only these; empty: all it lists

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> RemoteSection:
        values = dict(data)
        values["models"] = list(values.get("models", []))
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Manifest:
    """A whole ``mlxlama.toml``, and the user settings that fill what it leaves out.

    ``user_backend`` and ``user_port`` are no manifest keys: ``load_manifest`` sets
    them from ``config.yaml`` / ``MLX_LAMA_DEFAULT_*`` when the user set those
    (:mod:`mlx_lama.config`), so every reader of a loaded manifest agrees on them.
    """

    version: Literal[1] = 1  # a file must say it: the loader refuses one that does not
    server: ServerSection = ServerSection()
    defaults: Defaults = Defaults()
    aliases: dict[str, str] = field(default_factory=dict)
    backends: dict[str, BackendSection] = field(default_factory=dict)
    models: dict[str, ModelEntry] = field(default_factory=dict)
    remotes: dict[str, RemoteSection] = field(default_factory=dict)
    # The user's default_backend, used where a model and [defaults] name no backend.
    user_backend: str | None = field(default=None, metadata={NOT_IN_FILE: True})
    # The user's default_port: the first port tried for a server with no ``port``.
    user_port: int | None = field(default=None, metadata={NOT_IN_FILE: True})

    def backend_type(self, backend: str) -> BackendType:
        """The engine a backend name stands for (a built-in or a ``[backends]`` entry)."""
        section = self.backends.get(backend)
        if section is not None and section.type is not None:
            return section.type
        if backend in BUILTIN_BACKENDS:
            return cast(BackendType, backend)
        raise KeyError(backend)

    def backend_of(self, name: str) -> str:
        """The backend name model ``name`` runs on: its own; else, for an embedding
        model, ``EMBEDDING_BACKEND``; else ``[defaults]``', else the user's
        ``default_backend``, else ``DEFAULT_BACKEND``."""
        entry = self.models[name]
        if entry.backend is not None:
            return entry.backend
        if entry.kind == "embedding":
            return EMBEDDING_BACKEND
        return self.defaults.backend or self.user_backend or DEFAULT_BACKEND

    def is_embedding(self, name: str) -> bool:
        """Model ``name`` turns text into vectors (``kind = "embedding"``)."""
        return self.models[name].kind == "embedding"

    def backend_from_user(self, name: str) -> bool:
        """Model ``name``'s backend is the user's ``default_backend``: the manifest names
        none for it, so it may run on another engine on another machine."""
        entry = self.models[name]
        return (
            entry.backend is None
            and entry.kind != "embedding"
            and self.defaults.backend is None
            and self.user_backend is not None
        )

    def relies_on_user_backend(self) -> bool:
        """Some model's backend is left to the user's settings (or the built-in default)."""
        return self.defaults.backend is None and any(
            entry.backend is None and entry.kind != "embedding" for entry in self.models.values()
        )

    def relies_on_user_port(self) -> bool:
        """Some server mlx-lama starts has no ``port``, so ``default_port`` would place it."""
        return any(
            entry.port is None and self.serve_mode(name) != "never" and not self.is_external(name)
            for name, entry in self.models.items()
        )

    def file_only(self) -> Manifest:
        """This manifest without what the user's settings filled in (what the file says)."""
        return replace(self, user_backend=None, user_port=None)

    def is_external(self, name: str) -> bool:
        """Model ``name`` is served by a server mlx-lama does not run (``backend = "external"``)."""
        return self.backend_type(self.backend_of(name)) == "external"

    def serve_mode(self, name: str) -> ServeMode:
        return self.models[name].serve or self.defaults.serve

    def keep_alive_of(self, name: str) -> Duration:
        """How long model ``name`` stays loaded once idle: its own ``keep_alive``, else
        ``[defaults]``'s, else ``[server]``'s."""
        entry = self.models[name]
        return entry.keep_alive or self.defaults.keep_alive or self.server.keep_alive

    def kv_cache_of(self, name: str) -> Size | None:
        """The bound on model ``name``'s engine KV caches: its own ``kv_cache``, else
        ``[defaults]``'s; None for the default, which depends on the model's size
        (``backends.kvcache.kv_cache_bytes``)."""
        return self.models[name].kv_cache or self.defaults.kv_cache

    def parameters_of(self, name: str) -> dict[str, object]:
        """Model ``name``'s parameters: ``[defaults.parameters]`` under its own."""
        return {**self.defaults.parameters.as_dict(), **self.models[name].parameters.as_dict()}

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Manifest:
        """Build from validated data (``to_data``'s output, or pydantic's dump)."""
        return cls(
            version=data.get("version", SCHEMA_VERSION),
            server=ServerSection.from_data(data["server"]),
            defaults=Defaults.from_data(data["defaults"]),
            aliases=dict(data.get("aliases", {})),
            backends={k: BackendSection(**v) for k, v in data.get("backends", {}).items()},
            models={k: ModelEntry.from_data(v) for k, v in data.get("models", {}).items()},
            remotes={k: RemoteSection.from_data(v) for k, v in data.get("remotes", {}).items()},
            user_backend=data.get("user_backend"),
            user_port=data.get("user_port"),
        )

    def to_data(self) -> dict[str, Any]:
        """Plain JSON-able data that :meth:`from_data` reads back to an equal manifest."""
        return cast(dict[str, Any], _plain(self))


def _duration(value: object) -> Duration | None:
    return None if value is None else Duration.parse(value)


def _size(value: object) -> Size | None:
    return None if value is None else Size.parse(value)


def _plain(value: object) -> object:
    if isinstance(value, Duration):
        return -1 if value.forever else value.seconds
    if isinstance(value, Size):
        return value.bytes if value.bytes is not None else f"{value.percent:g}%"
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}  # type: ignore[arg-type]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
