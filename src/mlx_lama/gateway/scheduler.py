"""Which model servers are loaded: start on demand, unload when idle, evict to make room.

The gateway asks :meth:`Scheduler.acquire` for a model's server before each
request and releases the :class:`Lease` when the response ends. A server that
is not running is started on the first request (concurrent requests wait on
that one start; one start at a time, as Ollama loads one model at a time).
When the server goes idle its keep_alive timer starts; at expiry it is
stopped. Before a start, ``max_loaded`` and ``memory_budget`` are kept by
stopping idle, least-recently-used, unpinned on-demand servers; when every
candidate is busy the start waits for one to go idle. Requests waiting for a
start are bounded: past ``max_queue`` the request is refused (503).

``serve = "always"`` servers are adopted, never expire and are never
evicted. A server that dies (or fails its liveness probe, see
:mod:`mlx_lama.gateway.supervisor`) is restarted with exponential backoff
(1 s doubling to 60 s); requests for it wait for the restart. After
``MAX_FAILURES`` failed starts or crashes within ``FAILURE_WINDOW`` it is
``failed``: requests get 503 with its last log lines until the manifest
changes. A server whose launch spec changed is replaced: when the new one
can start beside it (another port, memory for both) the old one serves on
until the new one is ready; otherwise the old one goes first and requests
wait for the new one. Either way the old one finishes its requests (up to
``DRAIN_TIMEOUT``) before it is stopped.

Processes are started and stopped through ``orchestrator.process`` on worker
threads (those calls block). It never decides what the manifest should be,
and it never signals a process it has no run record for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil

from mlx_lama.backends.base import launch_spec
from mlx_lama.errors import MlxLamaError
from mlx_lama.gateway.watchdog import Watchdog
from mlx_lama.orchestrator import process
from mlx_lama.orchestrator.state import RunRecord, ServerSpec
from mlx_lama.schema.manifest import DEFAULT_KEEP_ALIVE, DEFAULT_WEDGE_TIMEOUT
from mlx_lama.schema.units import Duration

log = logging.getLogger(__name__)

SlotState = Literal["stopped", "starting", "ready", "stopping", "restarting", "failed"]

DEFAULT_MAX_QUEUE = 512  # Ollama's OLLAMA_MAX_QUEUE default
MEMORY_MARGIN = 256 * 2**20  # runtime, KV cache and activations beyond the weights
WEIGHT_FACTOR = 1.1
_WEIGHT_SUFFIXES = (".safetensors", ".npz", ".gguf", ".bin")
_TICK = 0.25  # s between looks at every server (expiry, crashes, due starts)
_FOREVER_SECONDS = 292 * 365 * 86400  # what Ollama shows for "never expires" (MaxInt64 ns)
FIRST_BACKOFF = 1.0  # s; doubles with every failure in the window
MAX_BACKOFF = 60.0
MAX_FAILURES = 5  # failed starts and crashes within FAILURE_WINDOW before giving up
FAILURE_WINDOW = 600.0  # s
NAME_TAKEN_RETRY = 5.0  # s before an always server whose name another project runs is tried again
DRAIN_TIMEOUT = 30.0  # s an old server gets to finish its requests before it is stopped
CHANGED = "its launch spec changed in the manifest"
# A successor starting beside its predecessor is recorded as NAME::next (never a
# model name: a name has at most one ':') until the predecessor has stopped.
STAGING_SUFFIX = "::next"


class SchedulerError(MlxLamaError):
    """A model could not be made ready; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, *, status: int = 500, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


def estimate_memory(model_path: Path | None, ranks_here: int = 1, ranks: int = 1) -> int:
    """Bytes a server for the model in ``model_path`` is expected to hold here: its
    weight files times a small factor, plus a fixed margin. A model sharded over
    ``ranks`` ranks, ``ranks_here`` of them on this machine, holds that share of
    the weights and a margin per local rank. Reads only file sizes."""
    weights = 0
    if model_path is not None:
        with contextlib.suppress(OSError):
            for item in model_path.iterdir():
                if item.name.endswith(_WEIGHT_SUFFIXES):
                    with contextlib.suppress(OSError):
                        weights += item.stat().st_size
    return int(weights * WEIGHT_FACTOR * ranks_here / max(ranks, 1)) + MEMORY_MARGIN * ranks_here


def rank_counts(spec: ServerSpec) -> tuple[int, int]:
    """How many ranks of ``spec`` run on this machine, and in all (1 and 1 when it
    is not distributed)."""
    if spec.distribution is None:
        return 1, 1
    from mlx_lama.distributed import LaunchProblem, is_this_machine, read_hostfile

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

    def note_failure(self, now: float) -> float | None:
        """Count a failed start or a crash; the backoff before the next try, or None
        when there were MAX_FAILURES within FAILURE_WINDOW (give up)."""
        self.failures = [t for t in self.failures if now - t < FAILURE_WINDOW] + [now]
        if len(self.failures) >= MAX_FAILURES:
            return None
        return float(min(MAX_BACKOFF, FIRST_BACKOFF * 2.0 ** (len(self.failures) - 1)))


@dataclass(frozen=True, slots=True)
class Changes:
    """What a new manifest means for running servers (from :meth:`Scheduler.configure`)."""

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
    _scheduler: Scheduler
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
            self._scheduler._release(self.slot)


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_loaded: int = 3
    memory_budget: int | None = None  # bytes; None: no limit
    max_queue: int = DEFAULT_MAX_QUEUE
    ready_timeout: float | None = None  # None: the engine's default
    manifest: str = ""
    wedge_timeout: float = DEFAULT_WEDGE_TIMEOUT.seconds  # s with no progress; 0: no watchdog


class Scheduler:
    """Loaded servers and the rules for loading and unloading them. Use from one event loop."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.slots: dict[str, Slot] = {}
        # Removed from the manifest, their servers not stopped yet (``/health`` lists
        # them until they are, so a verb that removed one can wait for its stop).
        self.retiring: dict[str, Slot] = {}
        self._pending = 0
        self._load_lock = asyncio.Lock()
        self._idle = asyncio.Event()  # set whenever a request releases a server
        self._reaper: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.watchdog = Watchdog()
        self._tasks: set[asyncio.Task[object]] = set()
        self.on_load: Callable[[str, float, bool], None] | None = None

    # -- configuration

    def configure(
        self,
        servers: Iterable[ServerSpec],
        keep_alive: Mapping[str, Duration],
        pinned: Iterable[str],
        config: SchedulerConfig | None = None,
        *,
        missing: Iterable[str] = (),
    ) -> Changes:
        """Take a new set of servers (at start and after the manifest changed).

        A server whose launch spec is unchanged keeps its process and state
        (keep_alive and pin changes apply as they are); a failed one is
        re-armed, since a manifest change is its retry. A changed spec gets a
        new slot that ``replaces`` the running server, which keeps serving
        until :meth:`apply_changes` drains it. Stops nothing itself.
        """
        if config is not None:
            self.config = config
        pins = set(pinned)
        absent = set(missing)
        replaced: list[Slot] = []
        fresh: dict[str, Slot] = {}
        for spec in servers:
            old = self.slots.get(spec.name)
            duration = keep_alive.get(spec.name, DEFAULT_KEEP_ALIVE)
            if old is not None and old.spec.spec_hash == spec.spec_hash:
                old.spec = spec
                old.keep_alive = duration
                old.pinned = spec.name in pins
                old.missing = spec.name in absent
                if old.state == "failed":
                    old.state = "stopped"
                    old.failures.clear()
                    old.retry_at = 0.0
                fresh[spec.name] = old
                continue
            slot = Slot(
                spec=spec,
                keep_alive=duration,
                pinned=spec.name in pins,
                memory=estimate_memory(spec.model_path, *rank_counts(spec)),
                missing=spec.name in absent,
            )
            if old is not None:
                slot.replaces = old if old.record is not None else old.replaces
                if slot.replaces is not None:
                    replaced.append(slot)
            fresh[spec.name] = slot
        removed = tuple(slot for name, slot in self.slots.items() if name not in fresh)
        self.slots = fresh
        return Changes(removed=removed, replaced=tuple(replaced))

    def apply_changes(self, changes: Changes) -> list[asyncio.Task[object]]:
        """Carry out ``changes`` in the background: removed servers stop once their
        requests end; replaced ones are restarted from the new spec, beside the
        old one when it fits (see :meth:`_load`). Returns the tasks, for callers
        that must wait."""
        tasks = []
        for slot in changes.removed:
            self.retiring[slot.name] = slot
            tasks.append(self._spawn(self._retire_removed(slot)))
        for slot in changes.replaced:
            old = slot.replaces
            slot.overlap = old is not None and old.ready and self._fits_beside(old, slot)
            if slot.loading is None:
                slot.loading = self._load_task(slot)
            tasks.append(self._spawn(_quietly(slot.loading)))
        return tasks

    def adopt(self, records: Iterable[RunRecord]) -> list[str]:
        """Take over servers already running from our specs (found by ``observe``)."""
        adopted = []
        now = time.monotonic()
        for record in records:
            slot = self.slots.get(record.name)
            if slot is None or slot.record is not None or record.spec_hash != slot.spec.spec_hash:
                continue
            self._mark_ready(slot, record, now)
            adopted.append(record.name)
        return adopted

    # -- the request path

    async def acquire(
        self, name: str, keep_alive: Duration | None = None, *, suspect: bool = False
    ) -> Lease:
        """Wait until ``name``'s server is ready and hold it. Raises SchedulerError.
        ``suspect``: the request was in flight when this model's server died before
        (a crash with it in flight again is blamed on it, see :meth:`crashed`)."""
        began = time.monotonic()
        slot = self.slots.get(name)
        if slot is None:
            raise SchedulerError(f"model {name!r} is no longer in the manifest", status=404)
        slot = _serving(slot)
        if not slot.ready:
            _refuse_unavailable(slot)
            if self._pending >= self.config.max_queue:
                raise SchedulerError(
                    f"server busy: {self._pending} requests are already waiting for models to load",
                    status=503,
                    hint="retry shortly",
                )
            self._pending += 1
            try:
                while not slot.ready:
                    current = self.slots.get(name)
                    if current is None:
                        raise SchedulerError(f"model {name!r} was removed", status=404)
                    slot = _serving(current)
                    if slot.ready:
                        break
                    _refuse_unavailable(slot)
                    if slot.loading is None:
                        slot.loading = self._load_task(slot)
                    # shield: one waiter going away must not cancel the start the others wait on
                    await asyncio.shield(slot.loading)
            finally:
                self._pending -= 1
        slot.refs += 1  # before waiting at the gate: a held server is not stopped as idle
        slot.last_used = time.monotonic()
        if keep_alive is not None and not slot.pinned and not slot.always:
            slot.session = keep_alive
            slot.unload_after = keep_alive.seconds == 0
        gate = slot.gate
        if gate is not None:
            try:
                await gate.acquire()
            except BaseException:  # the client left while waiting its turn
                self._release(slot)
                raise
        lease = Lease(
            slot=slot, waited=time.monotonic() - began, _scheduler=self, _gate=gate, suspect=suspect
        )
        slot.leases.add(lease)
        return lease

    def _release(self, slot: Slot) -> None:
        slot.refs = max(0, slot.refs - 1)
        now = time.monotonic()
        slot.last_used = now
        if slot.refs == 0:
            slot.idle_since = now
            slot.expires_epoch = self._expiry_epoch(slot)
            if slot.unload_after and slot.state == "ready":
                self._spawn(self.unload(slot.name, reason="keep_alive 0"))
        self._idle.set()

    async def unload(self, name: str, *, reason: str = "unloaded") -> bool:
        """Stop ``name``'s server (``keep_alive: 0``): now when it is idle; when it has
        requests in flight, once they end or after ``DRAIN_TIMEOUT`` (in the
        background: a wedged request never keeps it running). ``always`` servers
        are the reconciler's and stay. Returns whether it stopped now."""
        slot = self.slots.get(name)
        if slot is None or slot.always or slot.state != "ready":
            return False
        if slot.refs:
            slot.unload_after = True
            self._spawn(self._retire(slot, reason))
            return False
        await self._stop(slot, reason)
        return True

    async def restart(self, name: str) -> None:
        """Stop ``name``'s server once its requests have ended, and start it again;
        requests arriving meanwhile wait for the new one. Raises SchedulerError
        (404 unknown, 409 not running)."""
        slot = self.slots.get(name)
        if slot is None:
            raise SchedulerError(f"model {name!r} is not in the manifest", status=404)
        if not slot.ready:
            raise SchedulerError(f"model {name!r} is not running ({slot.state})", status=409)
        await self._retire(slot, "restart requested")
        if self.slots.get(name) is not slot or slot.loading is not None:
            return  # removed, or started again meanwhile (an always server)
        slot.loading = self._load_task(slot)
        await asyncio.shield(slot.loading)

    # -- loading and making room

    def _load_task(self, slot: Slot) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._load(slot))
        task.add_done_callback(_retrieve)  # a start nobody waits for fails in the log only
        return task

    async def _load(self, slot: Slot) -> None:
        """Start ``slot``'s server (the body of ``slot.loading``), after waiting out a
        backoff. The server it replaces serves on beside it until it is ready when
        ``slot.overlap`` (then it is drained and stopped); otherwise it is drained
        and stopped first."""
        old = slot.replaces
        try:
            if old is not None and not slot.overlap:
                await self._retire(old, CHANGED)
                slot.replaces = old = None
            backoff = slot.retry_at - time.monotonic()
            if backoff > 0:
                await asyncio.sleep(backoff)
            async with self._load_lock:
                while slot.state == "stopping":
                    await self._wait_idle()
                if slot.state == "ready" or self.slots.get(slot.name) is not slot:
                    return
                await self._make_room(slot)
                slot.state = "starting"
                slot.session = None
                slot.unload_after = False
                slot.expires_epoch = time.time() + self._seconds(slot.keep_alive)
                began = time.monotonic()
                try:
                    record = await asyncio.to_thread(self._start, slot.spec, slot.overlap)
                except process.ServerNameTaken as error:
                    # Not this engine's failure: no backoff count; tried again later.
                    log.warning("%s", error.message)
                    slot.state, slot.error = "stopped", error.message
                    slot.retry_at = time.monotonic() + NAME_TAKEN_RETRY
                    raise SchedulerError(error.message, status=409, hint=error.hint) from None
                except MlxLamaError as error:
                    self._report_load(slot.name, time.monotonic() - began, False)
                    log.error("%s", error)  # with the log tail and the log's path
                    self._failed_start(slot, error.message.splitlines()[0])
                    raise SchedulerError(
                        f"model {slot.name!r} failed to load: {slot.error}",
                        status=500,
                        hint="the gateway's log has the engine's output",
                    ) from None
                self._report_load(slot.name, time.monotonic() - began, True)
                if self.slots.get(slot.name) is not slot:  # replaced or removed meanwhile
                    await asyncio.to_thread(process.stop_server, record)
                    slot.state = "stopped"
                    return
                slot.restart_pending = False
                self._mark_ready(slot, record, time.monotonic())  # requests come here now
        finally:
            slot.loading = None
        if old is not None and slot.ready:
            await self._retire(old, CHANGED)
            slot.replaces = None
            slot.overlap = False
            if slot.record is record:
                slot.record = await asyncio.to_thread(process.rename_record, record, slot.name)

    def _fits_beside(self, old: Slot, new: Slot) -> bool:
        """Can ``new`` start while ``old`` still runs: another port, and memory for
        both (within ``memory_budget``, else what the machine has free now)? Never
        for a model served across hosts: the other hosts' memory is not known here,
        and such a model is usually there because it fills them."""
        if old.record is None or new.spec.port == old.record.port:
            return False
        if new.spec.distribution is not None or old.spec.distribution is not None:
            return False
        budget = self.config.memory_budget
        if budget is not None:
            used = sum(s.memory for s in self.loaded()) + old.memory
            return used + new.memory <= budget
        return new.memory <= psutil.virtual_memory().available

    def _failed_start(self, slot: Slot, why: str) -> float | None:
        """Count a failure of ``slot``; the backoff before its next start (None: given up)."""
        now = time.monotonic()
        slot.error = why
        slot.expires_epoch = None
        backoff = slot.note_failure(now)
        if backoff is None:
            self._give_up(slot)
        else:
            slot.state = "restarting" if slot.restart_pending or slot.always else "stopped"
            slot.retry_at = now + backoff
        return backoff

    def _give_up(self, slot: Slot) -> None:
        slot.state = "failed"
        slot.restart_pending = False
        slot.log_tail = process.tail_log(process.log_path_for(slot.name))
        log.error(
            "giving up on %r: %d failures within %.0f minutes (last: %s); "
            "it is retried when the manifest changes",
            slot.name,
            len(slot.failures),
            FAILURE_WINDOW / 60,
            slot.error,
        )

    def _start(self, spec: ServerSpec, beside: bool = False) -> RunRecord:
        """Start ``spec``'s server, or take over one already running for it (started by
        ``mlx-lama apply`` meanwhile). ``beside`` the one it replaces, it is recorded
        under a staging name until that one has stopped (see
        :func:`process.rename_record`)."""
        if not beside:
            running = process.take_over(
                spec, manifest=self.config.manifest, ready_timeout=self.config.ready_timeout
            )
            if running is not None:
                return running
        return process.start_server(
            spec,
            manifest=self.config.manifest,
            ready_timeout=self.config.ready_timeout,
            record_name=f"{spec.name}{STAGING_SUFFIX}" if beside else None,
        )

    def _report_load(self, name: str, seconds: float, ok: bool) -> None:
        if self.on_load is not None:
            self.on_load(name, seconds, ok)

    async def _retire_removed(self, slot: Slot) -> None:
        """Stop a removed model's server (and the one it was replacing, if any)."""
        try:
            olds = [old for old in (slot, slot.replaces) if old is not None]
            await asyncio.gather(*(self._retire(old, "removed from the manifest") for old in olds))
        finally:
            if self.retiring.get(slot.name) is slot:
                del self.retiring[slot.name]

    async def _retire(self, slot: Slot, reason: str) -> None:
        """Stop an old server once its requests have ended (at most DRAIN_TIMEOUT)."""
        if slot.loading is not None:
            await _quietly(slot.loading)
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while slot.refs and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wait_idle(), deadline - time.monotonic())
        if slot.refs:
            log.warning(
                "%r still has %d requests after %gs; stopping it",
                slot.name,
                slot.refs,
                DRAIN_TIMEOUT,
            )
        while slot.state == "stopping":
            await self._wait_idle()
        if slot.record is not None:
            await self._stop(slot, reason)

    async def _make_room(self, slot: Slot) -> None:
        """Evict until ``slot`` fits ``max_loaded`` and the memory budget (waiting for busy
        servers to go idle when that is the only way). Raises SchedulerError when it never can."""
        budget = self.config.memory_budget
        if budget is not None and slot.memory > budget:
            raise SchedulerError(
                f"model {slot.name!r} needs about {_gb(slot.memory)}, more than the "
                f"memory budget of {_gb(budget)}",
                status=503,
                hint="raise memory_budget under [server] in mlxlama.toml",
            )
        while True:
            others = [s for s in self.slots.values() if s is not slot and s.loaded]
            counted = [s for s in others if not s.always]
            over_count = not slot.always and len(counted) >= self.config.max_loaded
            used = sum(s.memory for s in others)
            over_memory = budget is not None and used + slot.memory > budget
            if not over_count and not over_memory:
                return
            candidates = [s for s in counted if not s.pinned and s.state == "ready"]
            idle = sorted((s for s in candidates if s.refs == 0), key=lambda s: s.last_used)
            if idle:
                await self._stop(idle[0], f"evicted to make room for {slot.name!r}")
                continue
            if not candidates:
                what = "max_loaded" if over_count else "the memory budget"
                raise SchedulerError(
                    f"cannot load {slot.name!r}: {what} is reached and every loaded model "
                    "is pinned, always served or still starting",
                    status=503,
                    hint="raise max_loaded / memory_budget under [server], or unpin a model",
                )
            await self._wait_idle()

    async def _wait_idle(self) -> None:
        self._idle.clear()
        await self._idle.wait()

    async def _stop(self, slot: Slot, reason: str) -> None:
        record = slot.record
        slot.state = "stopping"
        _lose_leases(slot, Loss("stopped", reason))
        try:
            if record is not None:
                log.info("stopping %r (pid %d): %s", slot.name, record.pid, reason)
                await asyncio.to_thread(process.stop_server, record)
        finally:
            slot.state = "stopped"
            slot.record = None
            slot.expires_epoch = None
            slot.session = None
            self._idle.set()

    def _mark_ready(self, slot: Slot, record: RunRecord, now: float) -> None:
        launch = launch_spec(slot.spec, record.port)
        slot.record = record
        slot.base_url = launch.base_url
        slot.served_model = launch.served_model
        if slot.gate is None and launch.concurrency is not None:
            slot.gate = asyncio.Semaphore(launch.concurrency)  # one per slot: waiters keep it
        slot.state = "ready"
        slot.error = None
        slot.idle_since = now
        slot.last_used = now
        slot.expires_epoch = self._expiry_epoch(slot)

    def _expiry_epoch(self, slot: Slot) -> float | None:
        if slot.always:
            return None
        idle_for = time.monotonic() - slot.idle_since
        return time.time() - idle_for + self._seconds(slot.duration())

    @staticmethod
    def _seconds(duration: Duration) -> float:
        return _FOREVER_SECONDS if duration.forever else duration.seconds

    # -- failures: crashes, lost connections

    async def crashed(self, slot: Slot, why: str, *, wedged: bool = False) -> None:
        """``slot``'s server exited, stopped answering or is ``wedged``: stop what is
        left of it and start it again after the backoff (or give up, see
        :meth:`Slot.note_failure`). The requests in flight learn why (``Lease.loss``);
        requests arriving meanwhile wait for the restart. A crash with a request
        in flight that was in flight at an earlier one too is blamed on that
        request (which is refused, see ``engine_calls.py``), not counted
        toward giving up."""
        record = slot.record
        if record is None or slot.state != "ready":
            return
        log.warning("server %r (pid %d) %s", slot.name, record.pid, why)
        in_flight = _lose_leases(slot, Loss("wedged" if wedged else "crashed", why))
        blamed = any(lease.suspect for lease in in_flight)
        slot.crashes += 1
        slot.state = "stopping"
        slot.restart_pending = True
        backoff: float | None = 0.0
        try:
            await asyncio.to_thread(process.stop_server, record)  # a hung one is killed
        except MlxLamaError as error:
            log.error("could not stop %r: %s", slot.name, error)
        finally:
            slot.record = None
            slot.session = None
            if blamed:  # restart at once, uncounted: the request is refused, not retried
                slot.error, slot.state, slot.retry_at = why, "restarting", 0.0
            else:
                backoff = self._failed_start(slot, why)
            self._idle.set()
        if blamed:
            log.warning(
                "not counting this crash of %r: a request in flight at its last crash was "
                "in flight again (it is refused)",
                slot.name,
            )
        if backoff is not None:
            log.info("restarting %r in %gs", slot.name, backoff)

    async def lost(self, slot: Slot, grace: float = 0.0) -> bool:
        """The proxy lost its connection to ``slot``'s server. If its process is gone
        (within ``grace`` s: one killed a moment ago may still be tearing down),
        treat it as a crash (the caller's retry waits for the restart) and return
        True; False while it runs."""
        record = slot.record
        if record is None:
            return True
        deadline = time.monotonic() + grace
        while (gone := await asyncio.to_thread(process.exited, record)) is None:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        await self.crashed(slot, gone)
        return True

    # -- background: expiry, crash detection, pending starts, shutdown

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._reaper = loop.create_task(self._tick())
        self._watcher = loop.create_task(self._watch_wedges())

    async def _watch_wedges(self) -> None:
        """Restart servers that stop making progress with requests in flight
        (see ``watchdog.py``); apart from ``_tick``, whose looks a probe would hold up."""
        while True:
            await asyncio.sleep(_TICK)
            for slot in list(self.slots.values()):
                if slot.state != "ready":
                    self.watchdog.forget(slot.name)
                    continue
                timeout = self.config.wedge_timeout
                why = await self.watchdog.wedged(slot, timeout, time.monotonic())
                if why is not None and slot.state == "ready":
                    await self.crashed(slot, why, wedged=True)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(_TICK)
            for slot in list(self.slots.values()):
                try:
                    await self._check(slot, time.monotonic())
                except MlxLamaError as error:
                    log.error("%s: %s", slot.name, error)

    async def _check(self, slot: Slot, now: float) -> None:
        """One look at ``slot``: has its process died, has it been idle too long,
        is a (re)start due?"""
        if slot.state == "ready" and slot.record is not None:
            gone = process.exited(slot.record)
            if gone is not None:
                await self.crashed(slot, gone)
                return
            duration = slot.duration()
            if (
                not slot.refs
                and not slot.always
                and not duration.forever
                and now - slot.idle_since >= duration.seconds
            ):
                await self._stop(slot, f"idle for {duration}")
            return
        if slot.loading is None and self._started_elsewhere(slot):
            # `mlx-lama apply` started it meanwhile: take it over now, whatever
            # this slot's backoff or failures (the load waits until it answers).
            slot.state, slot.error, slot.retry_at = "stopped", None, 0.0
            slot.failures.clear()
            slot.loading = self._load_task(slot)
            return
        due = (slot.restart_pending or slot.always) and not slot.missing
        waiting = slot.state in ("stopped", "restarting") and slot.loading is None
        if due and waiting and now >= slot.retry_at:
            slot.loading = self._load_task(slot)

    def _started_elsewhere(self, slot: Slot) -> bool:
        """Does a server of this project, from ``slot``'s spec, run while the slot has
        none (started by ``mlx-lama apply``, or left by an earlier daemon)?"""
        if slot.state not in ("stopped", "restarting", "failed"):
            return False
        record = process.running_record(slot.name, manifest=self.config.manifest)
        return record is not None and record.spec_hash == slot.spec.spec_hash

    def _spawn(self, work: Coroutine[Any, Any, object]) -> asyncio.Task[object]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def shutdown(self, *, stop_always: bool = False) -> None:
        """Stop the background work and every on-demand server this gateway holds
        (with ``stop_always`` the ``always`` ones too; otherwise they keep running
        for the next ``serve`` or ``apply`` to adopt). Backoff waits and drains are
        cut short; a start in progress is finished first, so that its server is
        stopped rather than left behind."""
        for background in (self._reaper, self._watcher):
            if background is not None:
                background.cancel()
                await _quietly(background)
        waiting: list[asyncio.Task[Any]] = list(self._tasks)
        for slot in self.slots.values():
            if slot.loading is not None:
                waiting.append(slot.loading)
                if slot.state != "starting":
                    slot.loading.cancel()
        for task in self._tasks:
            task.cancel()
        for task in waiting:
            await _quietly(task)
        for slot in list(self.slots.values()):
            for held in (slot.replaces, slot):
                if (
                    held is not None
                    and held.record is not None
                    and (stop_always or not held.always)
                ):
                    await self._stop(held, "gateway shutting down")

    # -- views

    def loaded(self) -> list[Slot]:
        return [s for s in self.slots.values() if s.loaded]


def _gb(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e8 else f"{math.ceil(size / 1e6)} MB"


def _serving(slot: Slot) -> Slot:
    """The slot a request for ``slot``'s model uses now: the server it replaces
    while that one serves on beside it, else ``slot`` itself."""
    old = slot.replaces
    if slot.overlap and not slot.ready and old is not None and old.ready:
        return old
    return slot


def _refuse_unavailable(slot: Slot) -> None:
    """SchedulerError (503) when ``slot`` cannot be started now: its files are not in
    the cache yet, or it has failed too often."""
    if slot.missing:
        raise SchedulerError(
            f"model {slot.name!r} is not downloaded yet",
            status=503,
            hint=f"the daemon pulls models the manifest adds (see its log), or run "
            f"`mlx-lama pull {slot.name}`; retry when `mlx-lama list` shows it",
        )
    if slot.state == "failed":
        raise SchedulerError(
            f"model {slot.name!r} failed {len(slot.failures)} times within "
            f"{FAILURE_WINDOW / 60:.0f} minutes and is not started again (last: {slot.error})",
            status=503,
            hint="see `mlx-lama ps` and the server's log; saving the manifest retries it",
        )


def _lose_leases(slot: Slot, loss: Loss) -> list[Lease]:
    """Tell the requests in flight on ``slot``'s server that it is going (``loss``);
    they are no longer its work. Returns them."""
    in_flight = list(slot.leases)
    slot.leases.clear()
    for lease in in_flight:
        lease.loss = loss
    return in_flight


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a background task's exception as seen (it was logged where it happened)."""
    if not task.cancelled():
        task.exception()


async def _quietly(task: asyncio.Future[Any]) -> None:
    """Wait for ``task`` without its exception or cancellation."""
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await task
