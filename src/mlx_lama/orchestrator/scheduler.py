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
:mod:`mlx_lama.orchestrator.supervisor`) is restarted with exponential backoff
(1 s doubling to 60 s); requests for it wait for the restart. After
``MAX_FAILURES`` failed starts or crashes within the failure window it is
``failed``: requests get 503 with its last log lines until the manifest
changes. A server whose launch spec changed is replaced: when the new one
can start beside it (another port, memory for both) the old one serves on
until the new one is ready; otherwise the old one goes first and requests
wait for the new one. Either way the old one finishes its requests (up to
the ``drain`` timing) before it is stopped.

Processes are started and stopped through ``orchestrator.process`` on worker
threads (those calls block). It never decides what the manifest should be,
and it never signals a process it has no run record for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from mlx_lama.backends.spec import RunRecord, ServerSpec
from mlx_lama.errors import MlxLamaError
from mlx_lama.orchestrator import policy, process, runrecords
from mlx_lama.orchestrator.loading import Loader, quietly
from mlx_lama.orchestrator.memory import server_estimate
from mlx_lama.orchestrator.slots import (
    Changes,
    Lease,
    Loss,
    SchedulerConfig,
    SchedulerError,
    Slot,
)
from mlx_lama.orchestrator.slottable import lose_leases
from mlx_lama.schema.manifest import DEFAULT_KEEP_ALIVE
from mlx_lama.timings import timings
from mlx_lama.units import Duration

log = logging.getLogger(__name__)


class Scheduler(Loader):
    """Loaded servers and the rules for loading and unloading them. Use from one event loop."""

    def __init__(self, config: SchedulerConfig) -> None:
        super().__init__(config)
        self._pending = 0  # requests waiting for a server to start
        self._reaper: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None

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
            change = policy.reload_change(old, spec)
            if old is not None and change == "keep":
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
                memory=server_estimate(spec).total,
                missing=spec.name in absent,
            )
            if old is not None and change == "replace":
                slot.replaces = old if old.record is not None else old.replaces
                replaced.append(slot)
            fresh[spec.name] = slot
        removed = tuple(self.slots[name] for name in policy.removed(self.slots, fresh))
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
            tasks.append(self._spawn(quietly(slot.loading)))
        return tasks

    def adopt_running(self, project: str) -> list[str]:
        """At the daemon's start: adopt ``project``'s servers already running from these
        specs (their run records checked against the process table) and drop the
        records of dead ones. Another project's servers are never adopted or stopped.
        Returns the names adopted."""
        records, warnings = runrecords.read_records()
        for warning in warnings:
            log.warning("%s", warning)
        inspected = [s for s in map(runrecords.inspect_record, records) if s.project == project]
        for gone in (s.record for s in inspected if not s.alive):
            log.info("dropping the run record of %r: pid %d is gone", gone.name, gone.pid)
            process.stop_server(gone)  # signals nothing: only deletes the record
        adopted = self.adopt(s.record for s in inspected if s.state == "running")
        if adopted:
            log.info("adopted running servers: %s", ", ".join(sorted(adopted)))
        return adopted

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
        slot = policy.serving(slot)
        if not slot.ready:
            _refuse_if_unavailable(slot)
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
                    slot = policy.serving(current)
                    if slot.ready:
                        break
                    _refuse_if_unavailable(slot)
                    if slot.loading is None:
                        slot.loading = self._load_task(slot)
                    # shield: one waiter going away must not cancel the start the others wait on
                    await asyncio.shield(slot.loading)
            finally:
                self._pending -= 1
        slot.refs += 1  # before waiting at the gate: a held server is not stopped as idle
        slot.last_used = time.monotonic()
        if keep_alive is not None and policy.takes_keep_alive(slot):
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
            slot=slot,
            waited=time.monotonic() - began,
            _on_release=self._release,
            _gate=gate,
            suspect=suspect,
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
        requests in flight, once they end or after the ``drain`` timing (in the
        background: a wedged request never keeps it running). ``always`` servers
        are the reconciler's and stay. Returns whether it stopped now."""
        slot = self.slots.get(name)
        if slot is None or not policy.unloadable(slot):
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

    async def _retire_removed(self, slot: Slot) -> None:
        """Stop a removed model's server (and the one it was replacing, if any)."""
        try:
            olds = [old for old in (slot, slot.replaces) if old is not None]
            await asyncio.gather(*(self._retire(old, "removed from the manifest") for old in olds))
        finally:
            if self.retiring.get(slot.name) is slot:
                del self.retiring[slot.name]

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
        in_flight = lose_leases(slot, Loss("wedged" if wedged else "crashed", why))
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

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._reaper = loop.create_task(self._tick())
        self._watcher = loop.create_task(self._watch_wedges())

    async def _watch_wedges(self) -> None:
        """Restart servers that stop making progress with requests in flight
        (see ``watchdog.py``); apart from ``_tick``, whose looks a probe would hold up."""
        while True:
            await asyncio.sleep(timings().tick)
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
            await asyncio.sleep(timings().tick)
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
            expired = policy.expiry(slot, now)
            if expired is not None:
                await self._stop(slot, expired)
            return
        if policy.start_due(slot, now):
            slot.loading = self._load_task(slot)

    async def shutdown(self, *, stop_always: bool = False) -> None:
        """Stop the background work and every on-demand server this gateway holds
        (with ``stop_always`` the ``always`` ones too; otherwise they keep running
        for the next ``serve`` or ``apply`` to adopt). Backoff waits and drains are
        cut short; a start in progress is finished first, so that its server is
        stopped rather than left behind."""
        for background in (self._reaper, self._watcher):
            if background is not None:
                background.cancel()
                await quietly(background)
        waiting: list[asyncio.Task[Any]] = list(self._tasks)
        for slot in self.slots.values():
            if slot.loading is not None:
                waiting.append(slot.loading)
                if slot.state != "starting":
                    slot.loading.cancel()
        for task in self._tasks:
            task.cancel()
        for task in waiting:
            await quietly(task)
        for slot in list(self.slots.values()):
            for held in (slot.replaces, slot):
                if (
                    held is not None
                    and held.record is not None
                    and (stop_always or not held.always)
                ):
                    await self._stop(held, "gateway shutting down")


def _refuse_if_unavailable(slot: Slot) -> None:
    refusal = policy.unavailable(slot, timings())
    if refusal is not None:
        raise refusal
