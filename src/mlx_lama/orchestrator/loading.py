"""Starting a slot's server: wait out its backoff, make room, start (or take over),
count failures; and draining an old server before it stops.

:class:`Loader` adds the start side to the :class:`SlotTable`. At most one
server starts at a time (as Ollama loads one model at a time). Before a
start, ``max_loaded`` and ``memory_budget`` are kept by evicting idle
on-demand servers (:func:`policy.room_for`). A server whose launch spec
changed starts beside its predecessor when it fits (another port, memory for
both: :func:`policy.fits_beside`); the old one serves until the new one is
ready, then finishes its requests (up to the ``drain`` timing) and is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import psutil

from mlx_lama.backends.spec import RunRecord, ServerSpec
from mlx_lama.errors import MlxLamaError
from mlx_lama.humanize import duration_str
from mlx_lama.orchestrator import policy, process
from mlx_lama.orchestrator.slots import SchedulerError, Slot
from mlx_lama.orchestrator.slottable import SlotTable
from mlx_lama.timings import timings

log = logging.getLogger(__name__)

CHANGED = "its launch spec changed in the manifest"
# A successor starting beside its predecessor is recorded as NAME::next (never a
# model name: a name has at most one ':') until the predecessor has stopped.
STAGING_SUFFIX = "::next"


class Loader(SlotTable):
    """Starts slots' servers (one at a time) and retires old ones."""

    def _load_task(self, slot: Slot) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._load(slot))
        task.add_done_callback(retrieve)  # a start nobody waits for fails in the log only
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
                    slot.retry_at = time.monotonic() + timings().name_taken_retry
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

    async def _make_room(self, slot: Slot) -> None:
        """Evict until ``slot`` fits ``max_loaded`` and the memory budget (waiting for busy
        servers to go idle when that is the only way). Raises SchedulerError when it never can."""
        while True:
            room = policy.room_for(
                slot,
                self.slots.values(),
                max_loaded=self.config.max_loaded,
                budget=self.config.memory_budget,
            )
            if room is None:
                return
            if isinstance(room, SchedulerError):
                raise room
            if isinstance(room, policy.Evict):
                await self._stop(room.slot, f"evicted to make room for {slot.name!r}")
            else:
                await self._wait_idle()

    def _fits_beside(self, old: Slot, new: Slot) -> bool:
        budget = self.config.memory_budget
        available = psutil.virtual_memory().available if budget is None else 0
        return policy.fits_beside(old, new, self.loaded(), budget=budget, available=available)

    def _start(self, spec: ServerSpec, beside: bool = False) -> RunRecord:
        """Start ``spec``'s server, or take over one already running for it (started
        behind this daemon's back: by an ``mlx-lama apply`` that began before it, or
        by hand). ``beside`` the one it replaces, it is recorded
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

    def _failed_start(self, slot: Slot, why: str) -> float | None:
        """Count a failure of ``slot``; the backoff before its next start (None: given up)."""
        now = time.monotonic()
        slot.error = why
        slot.expires_epoch = None
        slot.failures, backoff = policy.backoff(slot.failures, now, timings())
        if backoff is None:
            self._give_up(slot)
        else:
            slot.state = policy.waiting_state(slot)
            slot.retry_at = now + backoff
        return backoff

    def _give_up(self, slot: Slot) -> None:
        slot.state = "failed"
        slot.restart_pending = False
        slot.log_tail = process.tail_log(process.log_path_for(slot.name))
        log.error(
            "giving up on %r: %d failures within %s (last: %s); "
            "it is retried when the manifest changes or `mlx-lama apply` runs",
            slot.name,
            len(slot.failures),
            duration_str(timings().failure_window),
            slot.error,
        )

    async def _retire(self, slot: Slot, reason: str) -> None:
        """Stop an old server once its requests have ended (at most ``drain`` seconds)."""
        if slot.loading is not None:
            await quietly(slot.loading)
        drain = timings().drain
        deadline = time.monotonic() + drain
        while slot.refs and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wait_idle(), deadline - time.monotonic())
        if slot.refs:
            log.warning(
                "%r still has %d requests after %gs; stopping it",
                slot.name,
                slot.refs,
                drain,
            )
        while slot.state == "stopping":
            await self._wait_idle()
        if slot.record is not None:
            await self._stop(slot, reason)


def retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a background task's exception as seen (it was logged where it happened)."""
    if not task.cancelled():
        task.exception()


async def quietly(task: asyncio.Future[Any]) -> None:
    """Wait for ``task`` without its exception or cancellation."""
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await task
