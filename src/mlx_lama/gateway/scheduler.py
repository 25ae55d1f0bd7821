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

``serve = "always"`` servers are the reconciler's: they are adopted, never
expire and are never evicted, but a dead one is started again on demand.

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

from mlx_lama.backends.base import launch_spec
from mlx_lama.errors import MlxLamaError
from mlx_lama.orchestrator import process, runrecords
from mlx_lama.orchestrator.state import RunRecord, ServerSpec
from mlx_lama.schema.manifest import DEFAULT_KEEP_ALIVE
from mlx_lama.schema.units import Duration

log = logging.getLogger(__name__)

SlotState = Literal["stopped", "starting", "ready", "stopping"]

DEFAULT_MAX_QUEUE = 512  # Ollama's OLLAMA_MAX_QUEUE default
MEMORY_MARGIN = 256 * 2**20  # runtime, KV cache and activations beyond the weights
WEIGHT_FACTOR = 1.1
_WEIGHT_SUFFIXES = (".safetensors", ".npz", ".gguf", ".bin")
_REAP_EVERY = 0.25
_FOREVER_SECONDS = 292 * 365 * 86400  # what Ollama shows for "never expires" (MaxInt64 ns)


class SchedulerError(MlxLamaError):
    """A model could not be made ready; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, *, status: int = 500, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


def estimate_memory(model_path: Path | None) -> int:
    """Bytes a server for the model in ``model_path`` is expected to hold: its weight
    files times a small factor, plus a fixed margin. Reads only file sizes."""
    weights = 0
    if model_path is not None:
        with contextlib.suppress(OSError):
            for item in model_path.iterdir():
                if item.name.endswith(_WEIGHT_SUFFIXES):
                    with contextlib.suppress(OSError):
                        weights += item.stat().st_size
    return int(weights * WEIGHT_FACTOR) + MEMORY_MARGIN


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

    def duration(self) -> Duration:
        return self.session if self.session is not None else self.keep_alive


@dataclass(slots=True)
class Lease:
    """A request's hold on a ready server; :meth:`release` exactly once when done."""

    slot: Slot
    waited: float  # seconds spent waiting for the server (load_duration)
    _scheduler: Scheduler
    _released: bool = field(default=False)

    @property
    def base_url(self) -> str:
        return self.slot.base_url

    @property
    def served_model(self) -> str | None:
        return self.slot.served_model

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._scheduler._release(self.slot)


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_loaded: int = 3
    memory_budget: int | None = None  # bytes; None: no limit
    max_queue: int = DEFAULT_MAX_QUEUE
    ready_timeout: float | None = None  # None: the engine's default
    manifest: str = ""


class Scheduler:
    """Loaded servers and the rules for loading and unloading them. Use from one event loop."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.slots: dict[str, Slot] = {}
        self._pending = 0
        self._load_lock = asyncio.Lock()
        self._idle = asyncio.Event()  # set whenever a request releases a server
        self._reaper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[object]] = set()
        self.on_load: Callable[[str, float, bool], None] | None = None

    # -- configuration

    def configure(
        self,
        servers: Iterable[ServerSpec],
        keep_alive: Mapping[str, Duration],
        pinned: Iterable[str],
        config: SchedulerConfig | None = None,
    ) -> list[Slot]:
        """Take a new set of servers (at start and after the manifest changed).

        Unchanged servers keep their state. Returns the slots whose server must
        be stopped: gone from the manifest, or launched from a different spec.
        """
        if config is not None:
            self.config = config
        pins = set(pinned)
        stale: list[Slot] = []
        fresh: dict[str, Slot] = {}
        for spec in servers:
            old = self.slots.get(spec.name)
            duration = keep_alive.get(spec.name, DEFAULT_KEEP_ALIVE)
            if old is not None and old.spec.spec_hash == spec.spec_hash:
                old.spec = spec
                old.keep_alive = duration
                old.pinned = spec.name in pins
                fresh[spec.name] = old
                continue
            if old is not None:
                stale.append(old)
            fresh[spec.name] = Slot(
                spec=spec,
                keep_alive=duration,
                pinned=spec.name in pins,
                memory=estimate_memory(spec.model_path),
            )
        stale.extend(slot for name, slot in self.slots.items() if name not in fresh)
        self.slots = fresh
        return [slot for slot in stale if slot.record is not None]

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

    async def acquire(self, name: str, keep_alive: Duration | None = None) -> Lease:
        """Wait until ``name``'s server is ready and hold it. Raises SchedulerError."""
        began = time.monotonic()
        slot = self.slots.get(name)
        if slot is None:
            raise SchedulerError(f"model {name!r} is no longer in the manifest", status=404)
        if not slot.ready:
            if self._pending >= self.config.max_queue:
                raise SchedulerError(
                    f"server busy: {self._pending} requests are already waiting for models to load",
                    status=503,
                    hint="retry shortly",
                )
            self._pending += 1
            try:
                while not slot.ready:
                    if slot.loading is None:
                        slot.loading = asyncio.get_running_loop().create_task(self._load(slot))
                    # shield: one waiter going away must not cancel the start the others wait on
                    await asyncio.shield(slot.loading)
                    slot = self.slots.get(name, slot)
            finally:
                self._pending -= 1
        slot.refs += 1
        slot.last_used = time.monotonic()
        if keep_alive is not None and not slot.pinned and not slot.always:
            slot.session = keep_alive
            slot.unload_after = keep_alive.seconds == 0
        return Lease(slot=slot, waited=time.monotonic() - began, _scheduler=self)

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
        """Stop ``name``'s server now if it is loaded and idle (``keep_alive: 0``).

        ``always`` servers are the reconciler's and stay. Returns whether it stopped.
        """
        slot = self.slots.get(name)
        if slot is None or slot.always or slot.state != "ready" or slot.refs:
            return False
        await self._stop(slot, reason)
        return True

    # -- loading and making room

    async def _load(self, slot: Slot) -> None:
        try:
            async with self._load_lock:
                if slot.state == "ready":
                    return
                await self._wait_stopped(slot)
                await self._make_room(slot)
                slot.state = "starting"
                slot.session = None
                slot.unload_after = False
                slot.expires_epoch = time.time() + self._seconds(slot.keep_alive)
                began = time.monotonic()
                try:
                    record = await asyncio.to_thread(self._start, slot.spec)
                except MlxLamaError as error:
                    slot.state = "stopped"
                    slot.error = error.message.splitlines()[0]
                    self._report_load(slot.name, time.monotonic() - began, False)
                    log.error("%s", error)  # with the log tail and the log's path
                    raise SchedulerError(
                        f"model {slot.name!r} failed to load: {slot.error}",
                        status=500,
                        hint="the gateway's log has the engine's output",
                    ) from None
                self._report_load(slot.name, time.monotonic() - began, True)
                if self.slots.get(slot.name) is not slot:  # removed from the manifest meanwhile
                    await asyncio.to_thread(process.stop_server, record)
                    raise SchedulerError(f"model {slot.name!r} was removed", status=404)
                self._mark_ready(slot, record, time.monotonic())
        finally:
            slot.loading = None

    def _start(self, spec: ServerSpec) -> RunRecord:
        return process.start_server(
            spec, manifest=self.config.manifest, ready_timeout=self.config.ready_timeout
        )

    def _report_load(self, name: str, seconds: float, ok: bool) -> None:
        if self.on_load is not None:
            self.on_load(name, seconds, ok)

    async def _wait_stopped(self, slot: Slot) -> None:
        while slot.state == "stopping":
            await self._wait_idle()

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

    # -- failures seen by the proxy

    async def lost(self, slot: Slot) -> bool:
        """The proxy could not connect to ``slot``'s server. If its process is gone,
        forget it (the next request starts it again) and return True."""
        record = slot.record
        if record is None:
            return True
        identity = await asyncio.to_thread(runrecords.process_identity, record)
        if identity == "ours":
            return False
        log.warning("server %r (pid %d) is gone; it starts again on demand", slot.name, record.pid)
        await asyncio.to_thread(process.stop_server, record)  # clears the record only
        if slot.record is record:
            slot.state = "stopped"
            slot.record = None
        return True

    # -- background expiry and shutdown

    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(_REAP_EVERY)
            now = time.monotonic()
            for slot in list(self.slots.values()):
                if slot.state != "ready" or slot.refs or slot.always:
                    continue
                duration = slot.duration()
                if not duration.forever and now - slot.idle_since >= duration.seconds:
                    try:
                        await self._stop(slot, f"idle for {duration}")
                    except MlxLamaError as error:
                        log.error("could not stop %r: %s", slot.name, error)

    def _spawn(self, work: Coroutine[Any, Any, object]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop_slots(self, slots: Iterable[Slot], reason: str) -> None:
        for slot in slots:
            if slot.record is not None:
                await self._stop(slot, reason)

    async def shutdown(self, *, stop_on_demand: bool = True) -> None:
        """Stop the reaper and (by default) every on-demand server this gateway holds;
        ``always`` servers keep running for the next ``serve`` or ``apply`` to adopt."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for task in list(self._tasks):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
        if stop_on_demand:
            for slot in list(self.slots.values()):
                if slot.loading is not None:
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await slot.loading
                if not slot.always and slot.record is not None:
                    await self._stop(slot, "gateway shutting down")

    # -- views

    def loaded(self) -> list[Slot]:
        return [s for s in self.slots.values() if s.loaded]


def _gb(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e8 else f"{math.ceil(size / 1e6)} MB"
