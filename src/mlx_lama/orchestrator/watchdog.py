"""The wedge watchdog: a server with requests in flight that makes no progress.

An engine can stop working with its HTTP side still up: mlx_lm.server's
generation thread dies on some inputs, a process gets stopped (``SIGSTOP``),
a driver hangs. Its requests then wait forever and its liveness probe is
skipped (the probe only looks at idle servers). :class:`Watchdog` looks at
every ready server with requests in flight once a second and counts as
progress any of:

- CPU time: the engine's process tree used at least ``BUSY_CPU`` of a core
  since the last look (a prefill, however long, keeps a core busy; a wedged
  engine uses none);
- its log grew (mlx_lm.server logs every prefill chunk).

After ``silence`` seconds without either, an engine that takes requests in
parallel gets a one-token probe on a connection of its own (``probe``
seconds): one that answers is only waiting on slow clients. One that does
not, or an engine that takes one request at a time, is wedged: the
scheduler restarts it (:meth:`Scheduler.crashed` with ``wedged=True``), its
clients get an error, and ``/health`` shows it ``restarting``.

``wedge_timeout`` under ``[server]`` (default 60 s; 0 turns the watchdog
off) is the whole time from the last progress to the restart: three
quarters of it silence, a quarter the probe. Reads process and file state
only; the restart is the scheduler's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import psutil

from mlx_lama.backends.base import launch_spec
from mlx_lama.orchestrator import process, readiness

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Collection

    from mlx_lama.backends.spec import RunRecord, ServerSpec

log = logging.getLogger(__name__)

LOOK_INTERVAL = 1.0  # s between looks at one busy server
BUSY_CPU = 0.03  # share of a core that counts as working (an idle mlx_lm.server uses ~0.002)
SILENCE_SHARE = 0.75  # of wedge_timeout spent watching before the probe
MAX_PROBE = 15.0  # s a probe may take at most


class _Request(Protocol):
    @property
    def loss(self) -> object: ...  # None while its server is still working on it


class Slot(Protocol):
    """What the watchdog reads of a scheduler's slot (``scheduler.Slot`` is one); a
    protocol, so this module needs nothing from the scheduler that uses it."""

    @property
    def name(self) -> str: ...
    @property
    def spec(self) -> ServerSpec: ...
    @property
    def record(self) -> RunRecord | None: ...
    @property
    def gate(self) -> asyncio.Semaphore | None: ...
    @property
    def leases(self) -> Collection[_Request]: ...


Probe = Callable[[Slot, float], Awaitable[bool]]  # (slot, timeout) -> answered


@dataclass(slots=True)
class Sample:
    """What the watchdog last saw of one server."""

    pid: int
    cpu: float  # s of CPU its process tree had used
    log_size: int
    at: float  # monotonic time of this sample
    progress: float  # monotonic time progress was last seen


def cpu_seconds(pid: int) -> float | None:
    """User and system CPU time of ``pid`` and its descendants (None once it is gone)."""
    try:
        root = psutil.Process(pid)
        total = sum(root.cpu_times()[:2])
        for child in root.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += sum(child.cpu_times()[:2])
    except psutil.Error:
        return None
    return float(total)


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


async def probe(slot: Slot, timeout: float) -> str | None:
    """Ask ``slot``'s server for a one-token generation on a connection of its own:
    None when it answers within ``timeout`` s, else what went wrong. (The
    supervisor's liveness probe of idle servers asks the same.)"""
    record = slot.record
    if record is None:
        return "it is not running"
    launch = launch_spec(slot.spec, record.port)
    return await asyncio.to_thread(readiness.one_token, launch, timeout)


async def answers_probe(slot: Slot, timeout: float) -> bool:
    """Does ``slot``'s server answer :func:`probe` within ``timeout`` s?"""
    return await probe(slot, timeout) is None


class Watchdog:
    """Decides when a busy server is wedged; see the module docstring."""

    def __init__(self, probe: Probe = answers_probe) -> None:
        self._samples: dict[str, Sample] = {}
        self._probe = probe

    def forget(self, name: str) -> None:
        self._samples.pop(name, None)

    async def wedged(self, slot: Slot, timeout: float, now: float) -> str | None:
        """Why ``slot``'s server counts as wedged now (None: it does not). Call about
        every tick for each ready server; ``timeout`` is ``wedge_timeout`` in s."""
        record = slot.record
        busy = [lease for lease in slot.leases if lease.loss is None]
        if timeout <= 0 or record is None or not busy:
            self._samples.pop(slot.name, None)
            return None
        last = self._samples.get(slot.name)
        if last is None or last.pid != record.pid:
            self._samples[slot.name] = self._sample(slot, record.pid, now, now)
            return None
        if now - last.at < LOOK_INTERVAL:
            return None
        seen = self._sample(slot, record.pid, now, last.progress)
        if seen.cpu - last.cpu >= BUSY_CPU * (now - last.at) or seen.log_size != last.log_size:
            seen.progress = now
        self._samples[slot.name] = seen
        silence = timeout * SILENCE_SHARE
        if now - seen.progress < silence:
            return None
        if slot.gate is None:  # it takes requests in parallel: ask it on a connection of its own
            probe = min(MAX_PROBE, timeout - silence)
            if await self._probe(slot, probe):
                seen.progress = time.monotonic()
                return None
        self._samples.pop(slot.name, None)
        count = len(busy)
        return (
            f"made no progress for {timeout:g}s with {count} request{'s' * (count != 1)} "
            "in flight (no CPU time, no output, no answer to a probe)"
        )

    @staticmethod
    def _sample(slot: Slot, pid: int, now: float, progress: float) -> Sample:
        cpu = cpu_seconds(pid)
        size = log_size(process.log_path_for(slot.name))
        return Sample(pid=pid, cpu=cpu or 0.0, log_size=size, at=now, progress=progress)
