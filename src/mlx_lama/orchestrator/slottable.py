"""The daemon's table of served models, and the two things every part of it does
to a slot: mark its server ready, and stop it.

:class:`SlotTable` holds the slots of the manifest's servers, the ones being
retired, the scheduler's settings and its background tasks. The start side is
in ``loading.py``, the control loop that decides when in ``scheduler.py``.
Processes are stopped through ``orchestrator.process`` on worker threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from mlx_lama.backends.base import launch_spec
from mlx_lama.backends.spec import RunRecord
from mlx_lama.orchestrator import process
from mlx_lama.orchestrator.slots import Lease, Loss, SchedulerConfig, Slot
from mlx_lama.orchestrator.watchdog import Watchdog
from mlx_lama.units import Duration

log = logging.getLogger(__name__)

_FOREVER_SECONDS = 292 * 365 * 86400  # what Ollama shows for "never expires" (MaxInt64 ns)


class SlotTable:
    """The slots and what is shared by the code that starts, stops and watches them.
    Use from one event loop."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.slots: dict[str, Slot] = {}
        # Removed from the manifest, their servers not stopped yet (``/health`` lists
        # them until they are, so a verb that removed one can wait for its stop).
        self.retiring: dict[str, Slot] = {}
        self._load_lock = asyncio.Lock()
        self._idle = asyncio.Event()  # set whenever a request releases a server
        self.watchdog = Watchdog()
        self._tasks: set[asyncio.Task[object]] = set()
        self.on_load: Callable[[str, float, bool], None] | None = None

    def loaded(self) -> list[Slot]:
        return [s for s in self.slots.values() if s.loaded]

    def _spawn(self, work: Coroutine[Any, Any, object]) -> asyncio.Task[object]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _wait_idle(self) -> None:
        self._idle.clear()
        await self._idle.wait()

    def _report_load(self, name: str, seconds: float, ok: bool) -> None:
        if self.on_load is not None:
            self.on_load(name, seconds, ok)

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

    async def _stop(self, slot: Slot, reason: str) -> None:
        record = slot.record
        slot.state = "stopping"
        lose_leases(slot, Loss("stopped", reason))
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

    def _expiry_epoch(self, slot: Slot) -> float | None:
        if slot.always:
            return None
        idle_for = time.monotonic() - slot.idle_since
        return time.time() - idle_for + self._seconds(slot.duration())

    @staticmethod
    def _seconds(duration: Duration) -> float:
        return _FOREVER_SECONDS if duration.forever else duration.seconds


def lose_leases(slot: Slot, loss: Loss) -> list[Lease]:
    """Tell the requests in flight on ``slot``'s server that it is going (``loss``);
    they are no longer its work. Returns them."""
    in_flight = list(slot.leases)
    slot.leases.clear()
    for lease in in_flight:
        lease.loss = loss
    return in_flight
