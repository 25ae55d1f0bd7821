"""Carry out a :class:`Plan`: stop → remove → pull → restart/start. No decisions.

Called by ``mlx-lama apply`` (and later the daemon) while holding the apply
lock. Each action runs on its own: a failure is recorded and the independent
actions go on; a start whose model failed to pull is skipped. Pulls run in
parallel. The lock file is rewritten from what was resolved, atomically.
Progress goes to a :class:`Reporter`; this module never prints.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol

from mlx_lama.errors import MlxLamaError
from mlx_lama.humanize import size_str
from mlx_lama.orchestrator import process, projects, pull
from mlx_lama.orchestrator.desired import desired
from mlx_lama.orchestrator.entries import free_files
from mlx_lama.orchestrator.plan import Action, ActionKind, Plan
from mlx_lama.orchestrator.state import DesiredState, ObservedState, ServerSpec
from mlx_lama.schema.lockfile import Lock, LockedModel, lock_path_for, lockable_names, save_lock
from mlx_lama.schema.manifest import Manifest

log = logging.getLogger(__name__)


class Reporter(Protocol):
    """What the CLI (or the daemon's log) is told while a plan runs."""

    def started(self, action: Action) -> None: ...
    def progress(self, action: Action, done: int, total: int) -> None: ...
    def finished(self, outcome: Outcome) -> None: ...


class _Silent:
    def started(self, action: Action) -> None:
        pass

    def progress(self, action: Action, done: int, total: int) -> None:
        pass

    def finished(self, outcome: Outcome) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one action went. ``detail`` is the error message when it failed."""

    action: Action
    ok: bool
    detail: str = ""
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class ApplyContext:
    """Everything an apply needs, gathered by the caller before it starts."""

    manifest: Manifest
    manifest_path: Path
    lock: Lock
    desired: DesiredState
    observed: ObservedState
    cache_dir: Path
    write_lock: bool = True  # false for `apply --locked`: the lock is only read


@dataclass(frozen=True, slots=True)
class ApplyResult:
    outcomes: tuple[Outcome, ...]
    lock: Lock
    seconds: float
    refused: tuple[Action, ...] = field(default=())

    @property
    def failures(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if not o.ok)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.refused

    def summary(self) -> str:
        """``Pulled 2 models, started 1 server in 3.1s`` (counting successes only)."""
        done = [o.action.kind for o in self.outcomes if o.ok]
        words = {
            ActionKind.STOP: ("Stopped", "server"),
            ActionKind.REMOVE: ("Removed", "model"),
            ActionKind.PULL: ("Pulled", "model"),
            ActionKind.RESTART: ("Restarted", "server"),
            ActionKind.START: ("Started", "server"),
        }
        parts = []
        for kind in ActionKind:
            count = done.count(kind)
            if count:
                verb, noun = words[kind]
                parts.append(f"{verb} {count} {noun}{'s' if count != 1 else ''}")
        text = ", ".join(parts) if parts else "Changed nothing"
        text = text[0] + text[1:].lower() if parts else text
        return f"{text} in {self.seconds:.1f}s"


def apply_plan(
    plan: Plan,
    ctx: ApplyContext,
    *,
    reporter: Reporter | None = None,
    destructive_ok: bool = True,
    ready_timeout: float = 120.0,
    parallel_pulls: int = 4,
) -> ApplyResult:
    """Run ``plan``. Destructive actions (stop, remove) are refused unless
    ``destructive_ok``. Returns every outcome; never raises for one action."""
    report = reporter or _Silent()
    began = time.monotonic()
    projects.remember(ctx.manifest_path)  # so other projects' prunes keep what it names
    outcomes: list[Outcome] = []
    refused = tuple(a for a in plan.actions if a.kind.destructive and not destructive_ok)

    def run(action: Action, work: Callable[[], str]) -> Outcome:
        report.started(action)
        start = time.monotonic()
        try:
            outcome = Outcome(action, True, work(), time.monotonic() - start)
        except MlxLamaError as error:
            outcome = Outcome(action, False, str(error), time.monotonic() - start)
        except OSError as error:  # a disk or process error the library did not wrap
            outcome = Outcome(action, False, f"{type(error).__name__}: {error}")
        report.finished(outcome)
        return outcome

    runnable = [a for a in plan.actions if a not in refused]
    for action in _of(runnable, ActionKind.STOP):
        outcomes.append(run(action, partial(_stop, action, ctx)))
    for action in _of(runnable, ActionKind.REMOVE):
        outcomes.append(run(action, partial(_remove, action, ctx)))

    resolved: dict[str, LockedModel] = {}
    pulls = [
        partial(run, a, partial(_pull, a, ctx, resolved, report))
        for a in _of(runnable, ActionKind.PULL)
    ]
    outcomes.extend(run_interruptibly(pulls, parallel_pulls))

    lock = ctx.lock.with_models(resolved.values(), keep=lockable_names(ctx.manifest))
    if ctx.write_lock:
        save_lock(lock_path_for(ctx.manifest_path), lock)

    failed_models = {
        o.action.model for o in outcomes if not o.ok and o.action.kind is ActionKind.PULL
    }
    servers = {s.name: s for s in desired(
        ctx.manifest, lock, manifest_dir=ctx.manifest_path.parent, cache_dir=ctx.cache_dir,
        project=ctx.desired.project,
    ).servers}  # fmt: skip
    for action in [*_of(runnable, ActionKind.RESTART), *_of(runnable, ActionKind.START)]:
        if action.model in failed_models:
            skipped = Outcome(action, False, f"skipped: pulling {action.model!r} failed")
            report.finished(skipped)
            outcomes.append(skipped)
            continue
        outcomes.append(run(action, partial(_start, action, ctx, servers, ready_timeout)))

    return ApplyResult(tuple(outcomes), lock, time.monotonic() - began, refused)


def run_interruptibly(tasks: Sequence[Callable[[], Outcome]], limit: int) -> list[Outcome]:
    """Run ``tasks`` on at most ``limit`` daemon threads; results in task order.

    Not a ThreadPoolExecutor: its workers are joined at exit, so Ctrl-C would
    wait for every download to finish. Daemon threads are abandoned instead;
    a download cut short stays an ``*.incomplete`` blob that no observe takes
    for complete, and the lock is never written for it.
    """
    results: list[Outcome | None] = [None] * len(tasks)
    done: queue.Queue[int] = queue.Queue()
    slots = threading.Semaphore(max(1, limit))

    def work(index: int) -> None:
        with slots:
            try:
                results[index] = tasks[index]()
            finally:
                done.put(index)

    for index in range(len(tasks)):
        threading.Thread(target=work, args=(index,), name=f"pull-{index}", daemon=True).start()
    for _ in tasks:
        done.get()  # interruptible: Ctrl-C lands here
    return [r for r in results if r is not None]


def _of(actions: Iterable[Action], kind: ActionKind) -> list[Action]:
    return [a for a in actions if a.kind is kind]


def _stop(action: Action, ctx: ApplyContext) -> str:
    running = ctx.observed.server(str(action.server))
    if running is None:
        return "not running"
    process.stop_server(running.record)
    return f"stopped pid {running.record.pid}" if running.alive else "record cleared"


def _remove(action: Action, ctx: ApplyContext) -> str:
    result = free_files(str(action.repo), ctx.cache_dir, project=ctx.desired.project)
    if result.kept_because is not None:  # something claimed it since the plan was made
        raise MlxLamaError(f"kept {action.repo}: {result.kept_because}")
    return f"freed {size_str(result.freed)}"


def _pull(
    action: Action, ctx: ApplyContext, resolved: dict[str, LockedModel], report: Reporter
) -> str:
    spec = next(m for m in ctx.desired.models if m.name == action.model)
    assert spec.repo is not None
    known = None
    if spec.commit is not None:
        known = LockedModel(spec.name, spec.repo, spec.revision, spec.commit, spec.files)
    locked = pull.fetch(
        spec.repo,
        spec.revision,
        name=spec.name,
        cache_dir=ctx.cache_dir,
        project=ctx.desired.project,
        progress=lambda done, total: report.progress(action, done, total),
        locked=known,
    )
    resolved[spec.name] = locked
    return f"{locked.commit[:12]}, {size_str(locked.size)}"


def _start(
    action: Action, ctx: ApplyContext, servers: dict[str, ServerSpec], ready_timeout: float
) -> str:
    spec = servers.get(str(action.server))
    if spec is None or spec.model_path is None:
        raise MlxLamaError(
            f"cannot start {action.server!r}: its model is not in the cache",
            hint="run `mlx-lama apply` again once the pull succeeds",
        )
    if action.kind is ActionKind.RESTART:
        running = ctx.observed.server(spec.name)
        if running is not None:
            process.stop_server(running.record)
    record = process.start_server(
        spec, manifest=str(ctx.manifest_path), ready_timeout=ready_timeout
    )
    return f"pid {record.pid} on port {record.port}"
