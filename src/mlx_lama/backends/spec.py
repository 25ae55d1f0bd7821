"""What a server is launched from, and what records a launched one: the engine contract's data.

:class:`ServerSpec` is everything that decides how a server process is
launched (its hash changes exactly when a running server must restart);
:class:`RunRecord` is what ``process.start_server`` writes once it has spawned
one. Both live here, below the orchestrator, because every backend builds its
launch from a ``ServerSpec``; ``orchestrator/state.py`` re-exports them. Pure
data; no I/O.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mlx_lama.backend_names import BackendType, DistributedBackend
from mlx_lama.units import Size

Engine = BackendType
ServeMode = Literal["always", "on-demand", "never"]
# Parameters only a restart can change. Sampling parameters are also passed to
# the engine at launch, but the gateway applies them per request, so editing
# them must not restart a server (they stay out of the spec hash).
LAUNCH_PARAMETERS = frozenset({"num_ctx"})


ParameterValue = str | int | float | tuple[str, ...]  # a manifest parameter's value


@dataclass(frozen=True, slots=True)
class Distribution:
    """How a model is sharded over several machines with MLX distributed.

    Rank ``i`` runs on ``hosts[i]`` (an ssh destination); rank 0 is the HTTP
    server mlx-lama talks to. ``hostfile`` (an mlx.launch JSON hostfile)
    replaces ``hosts`` when given. ``files`` is "shared" when every host sees
    the model folder on a shared volume, so nothing is checked.
    """

    backend: DistributedBackend = "ring"
    hosts: tuple[str, ...] = ()
    hostfile: Path | None = None
    pipeline: bool = False
    files: Literal["check", "shared"] = "check"
    ring_port: int | None = None

    def launch_fields(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "hosts": list(self.hosts),
            "hostfile": str(self.hostfile) if self.hostfile else None,
            "pipeline": self.pipeline,
            "ring_port": self.ring_port,
        }


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """A server the manifest wants (``serve`` = always or on-demand).

    Everything that changes how the process is launched is in here, so the
    spec hash changes exactly when a running server must be restarted.
    Sampling defaults the gateway applies per request are not.
    """

    name: str
    model: str  # manifest model name
    backend: str  # backend name as written in the manifest ("mlx-lm", "fast", ...)
    engine: Engine
    serve: ServeMode
    model_path: Path | None  # snapshot or local folder; None until the model is locked
    repo: str | None = None
    commit: str | None = None
    host: str = "127.0.0.1"
    port: int | None = None  # None: any free port, chosen when it starts
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    parameters: tuple[tuple[str, ParameterValue], ...] = ()
    adapter: Path | None = None
    template: str | None = None
    distribution: Distribution | None = None  # None: one process on this machine
    kv_cache: Size | None = None  # the bound on its KV caches; None: the default one
    # Where a server without a port looks for one: the first free port from
    # ``first_port`` up, skipping ``taken_ports`` (declared by the manifest's other
    # servers and its gateway). None: any free port. The user's default_port; not
    # a launch setting (a server keeps the port it got), so not in the hash.
    first_port: int | None = field(default=None, compare=False)
    taken_ports: tuple[int, ...] = field(default=(), compare=False)

    def launch_fields(self) -> dict[str, object]:
        """The fields that decide how the process is launched, as plain JSON data.

        ``distribution`` is there only for a distributed server, so the hash of
        every other server is what it was before distributed serving existed.
        """
        fields: dict[str, object] = {
            "engine": self.engine,
            "model_path": str(self.model_path) if self.model_path else None,
            "commit": self.commit,
            "host": self.host,
            "port": self.port,
            "args": list(self.args),
            "env": dict(self.env),
            "parameters": {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in self.parameters
                if k in LAUNCH_PARAMETERS
            },
            "adapter": str(self.adapter) if self.adapter else None,
            "template": self.template,
        }
        if self.distribution is not None:
            fields["distribution"] = self.distribution.launch_fields()
        if self.kv_cache is not None:
            fields["kv_cache"] = str(self.kv_cache)
        return fields

    @property
    def spec_hash(self) -> str:
        """A stable digest of :meth:`launch_fields` (16 hex characters)."""
        text = json.dumps(self.launch_fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def target(self) -> str:
        return f"server:{self.name}"


@dataclass(frozen=True, slots=True)
class RunRecord:
    """What ``apply`` wrote when it started a server (``run/NAME.json``)."""

    name: str
    pid: int
    port: int
    host: str
    engine: Engine
    model: str
    spec_hash: str
    argv: tuple[str, ...]
    started_at: float  # epoch seconds
    process_started: float  # the OS's start time of pid, to detect PID reuse
    log_path: str
    manifest: str = ""
    spec: dict[str, object] = field(default_factory=dict, hash=False, compare=False)
