"""What the scheduler keeps per served model: :class:`Slot`, and a request's :class:`Lease` on it.

A slot is one manifest model's server as the daemon sees it: its launch spec,
its state, the requests in flight and its recent failures. These are plain
records: the rules that read them are in :mod:`mlx_lama.orchestrator.policy`,
the code that starts and stops processes in :mod:`mlx_lama.orchestrator.scheduler`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from mlx_lama.backends.spec import RunRecord, ServerSpec
from mlx_lama.errors import MlxLamaError
from mlx_lama.schema.manifest import DEFAULT_WEDGE_TIMEOUT
from mlx_lama.units import Duration

SlotState = Literal["stopped", "starting", "ready", "stopping", "restarting", "failed"]

DEFAULT_MAX_QUEUE = 512  # Ollama's OLLAMA_MAX_QUEUE default


class SchedulerError(MlxLamaError):
    """A model could not be made ready; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, *, status: int = 500, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


def rank_counts(spec: ServerSpec) -> tuple[int, int]:
    """How many ranks of ``spec`` run on this machine, and in all (1 and 1 when it
    is not distributed)."""
    if spec.distribution is None:
        return 1, 1
    from mlx_lama.backends.hosts import LaunchProblem, is_this_machine, read_hostfile

    hosts = list(spec.distribution.hosts)
    if spec.distribution.hostfile is not None:
        try:
            hosts = [host for host, _ips in read_hostfile(spec.distribution.hostfile)]
        except LaunchProblem:
            return 1, 1  # starting it reports the hostfile's problem
    here = sum(1 for host in hosts if is_this_machine(host))
    return max(here, 1), max(len(hosts), 1)


@dataclass(slots=True)
class Slot:
    """One served model and its server process, as the scheduler sees it."""

    spec: ServerSpec
    keep_alive: Duration  # the manifest's idle time for this model
    pinned: bool
    memory: int
    state: SlotState = "stopped"
    record: RunRecord | None = None
    base_url: str = ""
    served_model: str | None = None
    refs: int = 0
    session: Duration | None = None  # current keep_alive (a request may change it)
    idle_since: float = 0.0  # monotonic
    last_used: float = 0.0  # monotonic, for least-recently-used eviction
    expires_epoch: float | None = None  # wall clock, for /api/ps
    error: str | None = None  # why the last start failed
    loading: asyncio.Task[None] | None = None
    unload_after: bool = False  # keep_alive 0 arrived: unload when idle
    failures: list[float] = field(default_factory=list)  # monotonic times of recent failures
    log_tail: str = ""  # the server's last log lines, once it has failed
    last_probe: float = 0.0  # monotonic; the last liveness probe
    replaces: Slot | None = None  # the server of the old spec, until it has stopped
    overlap: bool = False  # ``replaces`` serves on until this one is ready
    restart_pending: bool = False  # it crashed while loaded: start it again after the backoff
    retry_at: float = 0.0  # monotonic; no start before this (backoff after a failure)
    missing: bool = False  # its model is not (completely) in the cache yet
    crashes: int = 0  # times its server died or hung while serving, since the gateway started
    gate: asyncio.Semaphore | None = None  # for engines that take a few requests at once
    leases: set[Lease] = field(default_factory=set)  # the requests its server is working on

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def always(self) -> bool:
        return self.spec.serve == "always"

    @property
    def loaded(self) -> bool:
        return self.state in ("starting", "ready")

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def shown_state(self) -> str:
        """The state to show: "restarting" from the moment a crash or wedge is seen."""
        return "restarting" if self.state == "stopping" and self.restart_pending else self.state

    def duration(self) -> Duration:
        return self.session if self.session is not None else self.keep_alive


@dataclass(frozen=True, slots=True)
class Changes:
    """What a new manifest means for running servers (``Scheduler.configure``)."""

    removed: tuple[Slot, ...] = ()  # no longer served: stop once idle
    replaced: tuple[Slot, ...] = ()  # new slots taking over from a running server (``replaces``)


LossKind = Literal["crashed", "wedged", "stopped"]


@dataclass(frozen=True, slots=True)
class Loss:
    """How a request's server went away under it: it ``crashed`` (died, or failed a
    probe), the watchdog found it ``wedged``, or it was ``stopped`` on purpose."""

    kind: LossKind
    why: str


@dataclass(slots=True, eq=False)
class Lease:
    """A request's hold on a ready server; :meth:`release` exactly once when done."""

    slot: Slot
    waited: float  # seconds spent waiting for the server (load_duration)
    _on_release: Callable[[Slot], None]  # the scheduler's bookkeeping for an ended request
    _gate: asyncio.Semaphore | None = None  # held for the request, when the engine has one
    _released: bool = field(default=False)
    suspect: bool = False  # the request was in flight at an earlier death of this model's server
    loss: Loss | None = None  # set when its server died or was restarted under it

    @property
    def base_url(self) -> str:
        return self.slot.base_url

    @property
    def served_model(self) -> str | None:
        return self.slot.served_model

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.slot.leases.discard(self)
            if self._gate is not None:
                self._gate.release()
            self._on_release(self.slot)


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_loaded: int = 3
    memory_budget: int | None = None  # bytes; None: no limit
    max_queue: int = DEFAULT_MAX_QUEUE
    ready_timeout: float | None = None  # None: the engine's default
    manifest: str = ""
    wedge_timeout: float = DEFAULT_WEDGE_TIMEOUT.seconds  # s with no progress; 0: no watchdog
