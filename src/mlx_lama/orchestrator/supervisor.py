"""The daemon's control loop: keep the running servers matching the manifest.

:class:`Supervisor` runs beside the gateway (started and stopped in its
lifespan). It

- watches the manifest and its lock (:mod:`mlx_lama.orchestrator.watch`) and
  reconciles after each save that changed their bytes, or on SIGHUP;
- reconciles by planning, with the same planner and the same view of the
  machine as ``mlx-lama apply`` (:func:`orchestrator.reconcile.plan_for`; the
  plan is logged, and ``/health`` shows the last one), then reloading the gateway that
  serves (``Served.reload``): routing-only edits are live at once, a changed
  launch spec restarts only that server, and nothing else is touched. A
  manifest that does not validate, or a deleted one, is logged with its
  ``file:line`` problems and ignored: the last good manifest stays in force
  (and ``/health`` shows the problem);
- pulls models the manifest added that are not in the cache, in the
  background, the way the apply at start does (``orchestrator.reconcile``);
  the lock file it writes is a change like any other, after which
  ``always`` servers for them start;
- probes idle servers now and then with a one-token generation; one that
  does not answer is treated as crashed and restarted by the scheduler.

Process exits, backoff and giving up are the scheduler's
(:meth:`Scheduler.crashed`); the supervisor only notices what the scheduler
cannot see from process state alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from mlx_lama.errors import MlxLamaError, UsageError
from mlx_lama.orchestrator import policy
from mlx_lama.orchestrator.apply import Outcome
from mlx_lama.orchestrator.plan import ActionKind, Plan
from mlx_lama.orchestrator.reconcile import plan_for, reconcile
from mlx_lama.orchestrator.watch import Fingerprint, fingerprint, watch_manifest
from mlx_lama.orchestrator.watchdog import probe
from mlx_lama.schema import load_manifest
from mlx_lama.schema.lockfile import lock_path_for, read_lock
from mlx_lama.timings import timings

if TYPE_CHECKING:
    from mlx_lama.orchestrator.scheduler import Scheduler
    from mlx_lama.orchestrator.slots import Changes, Slot
    from mlx_lama.schema.lockfile import Lock
    from mlx_lama.schema.manifest import Manifest

log = logging.getLogger(__name__)

PROBE_ENV = "MLX_LAMA_PROBE_INTERVAL"
DEFAULT_PROBE_INTERVAL = 30.0  # s an idle server goes unprobed


@dataclass(frozen=True, slots=True)
class ManifestProblem:
    """Why the manifest on disk is not the one in force."""

    message: str
    since: float  # epoch seconds


class Served(Protocol):
    """What the supervisor needs of the gateway it keeps in step with the manifest."""

    @property
    def manifest_path(self) -> Path: ...
    @property
    def cache_dir(self) -> Path: ...
    @property
    def not_downloaded(self) -> frozenset[str]: ...
    @property
    def scheduler(self) -> Scheduler: ...
    async def reload(
        self, manifest: Manifest | None = None, lock: Lock | None = None, *, wait: bool = True
    ) -> Changes: ...


class Supervisor:
    """Watches the manifest, reloads the gateway, pulls what is missing, probes servers."""

    def __init__(self, gateway: Served, *, probe_interval: float | None = None) -> None:
        self.gateway = gateway
        self.probe_interval = probe_interval if probe_interval is not None else probe_setting()
        self.problem: ManifestProblem | None = None
        self.reloads = 0  # successful reloads since start
        self.plan: Plan | None = None  # the plan of the last reload, as `mlx-lama plan` shows it
        self.last_changes: Changes | None = None  # what the scheduler did about that plan
        self._applied: Fingerprint | None = None  # what the last reload read
        self._wake = asyncio.Event()
        self._force = False
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._pull_task: asyncio.Task[None] | None = None
        self._pull_again = False  # the manifest changed while a pull ran
        self._failed_pull: Fingerprint | None = None  # what was in force when a pull failed
        self._rounds = [0, 0]  # reconciles begun, ended (for apply_now)
        self._ended = asyncio.Condition()

    # -- lifecycle

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._watch(), name="mlx-lama-watch"),
            loop.create_task(self._reconcile_loop(), name="mlx-lama-reconcile"),
        ]
        if self.probe_interval > 0:
            self._tasks.append(loop.create_task(self._probe_loop(), name="mlx-lama-probe"))
        self._wake.set()  # a save since the gateway loaded the manifest is not missed

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # A pull runs on a worker thread that cannot be cancelled; it finishes
        # on its own (or dies with the process) and leaves no partial files.

    @property
    def applied(self) -> Fingerprint | None:
        """The manifest and lock digests of the last reload (None before the first)."""
        return self._applied

    def poke(self) -> None:
        """Reconcile now even if the files look unchanged (SIGHUP)."""
        self._force = True
        self._wake.set()

    # -- reconciling

    async def _watch(self) -> None:
        # Every yield, an idle tick included, is a look: reconcile compares fingerprints.
        async for _ in watch_manifest(self.gateway.manifest_path, stop=self._stop):
            self._wake.set()

    async def _reconcile_loop(self) -> None:
        # One reconcile at a time; saves during one coalesce into exactly one more.
        while True:
            await self._wake.wait()
            self._wake.clear()
            force, self._force = self._force, False
            self._rounds[0] += 1
            try:
                await self.reconcile(force=force)
            except Exception:  # the loop must survive anything one reconcile does
                log.exception("reconcile failed; the last good manifest stays in force")
            finally:
                async with self._ended:
                    self._rounds[1] += 1
                    self._ended.notify_all()

    async def apply_now(self) -> Plan | None:
        """Reconcile the files as they are now, even if they look unchanged (``mlx-lama
        apply`` asks this of the daemon serving its manifest): a failed server is
        tried again. Returns once a reconcile that began after this call has ended:
        its plan, or None when the manifest was refused (see :attr:`problem`)."""
        wanted = self._rounds[0] + 1
        self.poke()
        async with self._ended:
            await self._ended.wait_for(lambda: self._rounds[1] >= wanted)
        return None if self.problem is not None else self.plan

    async def reconcile(self, *, force: bool = False) -> bool:
        """Reload the manifest if its bytes (or its lock's) changed; True if reloaded."""
        path = self.gateway.manifest_path
        seen = fingerprint(path)
        if seen == self._applied and not force:
            # The file is the one in force again (a bad save undone, the same content
            # restored): /health says what the file is now.
            self._valid_again(path)
            return False
        if seen[0] is None:
            self._refuse(
                f"{path} is gone; nothing was stopped, the last good manifest stays in force "
                "until it is back"
            )
            return False
        try:
            manifest = load_manifest(path)
            lock = read_lock(lock_path_for(path))
        except MlxLamaError as error:
            text = str(error) + (f"\n  hint: {error.hint}" if error.hint else "")
            self._refuse(f"{text}\nkeeping the last good manifest; fix and save to apply")
            return False
        began = time.monotonic()
        try:
            planned = await asyncio.to_thread(
                plan_for, path, manifest, lock, cache_dir=self.gateway.cache_dir
            )
            plan = planned.plan
        except (MlxLamaError, OSError) as error:  # the plan is for showing: reload anyway
            log.warning("could not plan this reload: %s", error)
            plan = Plan(notes=(f"could not plan this reload: {error}",))
        changes = await self.gateway.reload(manifest, lock, wait=False)
        self._applied = seen
        self.reloads += 1
        self.plan, self.last_changes = plan, changes
        self._valid_again(path)
        log.info(
            "reloaded %s in %.0f ms%s\n%s",
            path.name,
            (time.monotonic() - began) * 1000,
            "".join(
                f"; {what}: {', '.join(s.name for s in slots)}"
                for what, slots in (("restarting", changes.replaced), ("stopping", changes.removed))
                if slots
            ),
            plan.render().rstrip(),
        )
        self._start_pulls()
        return True

    def _valid_again(self, path: Path) -> None:
        if self.problem is not None:
            log.info("%s is valid again", path.name)
            self.problem = None

    def _refuse(self, message: str) -> None:
        if self.problem is None or self.problem.message != message:
            log.error("%s", message)
        since = self.problem.since if self.problem is not None else time.time()
        self.problem = ManifestProblem(message, since)

    # -- pulling what the manifest added

    def _start_pulls(self) -> None:
        """Pull in the background what the manifest wants on disk and the cache lacks.
        A pull that failed is tried again only once the manifest or lock changes."""
        if self._pull_task is not None and not self._pull_task.done():
            self._pull_again = True
            return
        self._pull_again = False
        applied = self._applied
        if applied is None or applied == self._failed_pull or not self.gateway.not_downloaded:
            return
        self._pull_task = asyncio.get_running_loop().create_task(self._pull(applied))

    async def _pull(self, applied: Fingerprint) -> None:
        try:
            outcomes = await asyncio.to_thread(self._pull_blocking)
        except MlxLamaError as error:
            log.error("pull failed: %s", error)
            outcomes = []
        if not all(o.ok for o in outcomes) or not outcomes:
            self._failed_pull = applied
        if any(o.ok for o in outcomes):
            self.poke()  # the files are in: reload so their servers can start
        elif self._pull_again:
            self._start_pulls()

    def _pull_blocking(self) -> list[Outcome]:
        """Pull the models the manifest has and the cache lacks, as ``mlx-lama apply``
        would (under the apply lock); the lock file is rewritten when they are in."""

        def announce(plan: Plan) -> None:
            if not plan.empty:
                log.info("pulling %s", ", ".join(a.target for a in plan.actions))

        result = reconcile(
            self.gateway.manifest_path,
            cache_dir=self.gateway.cache_dir,
            on_plan=announce,
            only=ActionKind.PULL,
        )
        outcomes = list(result.outcomes) if result is not None else []
        for outcome in outcomes:
            if outcome.ok:
                log.info("pulled %s (%s)", outcome.action.model, outcome.detail)
            else:
                log.error("pulling %s failed: %s", outcome.action.model, outcome.detail)
        return outcomes

    # -- liveness

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(timings().probe_tick)
            now = time.monotonic()
            for slot in list(self.gateway.scheduler.slots.values()):
                if policy.probe_due(slot, now, self.probe_interval):
                    slot.last_probe = now
                    await self._probe(slot)

    async def _probe(self, slot: Slot) -> None:
        record = slot.record
        if record is None:
            return
        pace = timings()
        timeout = min(pace.probe_timeout, max(pace.min_probe_timeout, self.probe_interval))
        problem = await probe(slot, timeout)
        if problem is not None and slot.record is record:
            await self.gateway.scheduler.crashed(
                slot, f"failed its liveness probe ({problem}); stopping it"
            )


def probe_setting() -> float:
    """Seconds between liveness probes of an idle server (``MLX_LAMA_PROBE_INTERVAL``;
    0 turns probing off)."""
    text = os.environ.get(PROBE_ENV, "").strip()
    if not text:
        return DEFAULT_PROBE_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise UsageError(
            f"{PROBE_ENV}={text!r} is invalid: use a number of seconds (0 turns probing off)"
        )
    return value
