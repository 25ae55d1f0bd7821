"""When a daemon serves the manifest, it alone starts and stops that project's servers.

:func:`daemons_part` and :func:`hand_off` are how ``mlx-lama apply`` gives the
daemon the server actions of its plan: the daemon reconciles the files now
(``POST /mlx-lama/apply``, with the same planner) and apply waits for each
server to get where its action says, pulling and removing files itself.

After a verb edits the manifest: make the machine match, for the models it touched.

:func:`settle` pulls what those models lack (with progress bars), then

- when a daemon serves this manifest, waits for it to pick the save up and
  for each model to reach what the manifest now says (an ``always`` model
  answering, a ``never`` or removed one stopped);
- otherwise applies those models' actions itself (start, stop, restart),
  without asking: the verb was the go-ahead.

Models the verb did not touch are left alone either way, the way
``docker compose up SERVICE`` leaves the other services.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from mlx_lama.cli._common import DEFAULT_READY_TIMEOUT
from mlx_lama.errors import MlxLamaError

if TYPE_CHECKING:
    from mlx_lama.cli.daemonclient import Daemon
    from mlx_lama.orchestrator.apply import Outcome, Reporter
    from mlx_lama.orchestrator.plan import Action, Plan
    from mlx_lama.orchestrator.state import ObservedState

STOP_TIMEOUT = 60.0  # s a server the daemon stops may take (its requests drain first)


def settle(
    manifest_path: Path, models: Sequence[str], *, timeout: float = DEFAULT_READY_TIMEOUT
) -> None:
    """Pull, then start or stop ``models`` as ``manifest_path`` now says, directly or
    through the daemon serving that file. Raises MlxLamaError when something failed."""
    from mlx_lama import paths
    from mlx_lama.cli._progress import ApplyReporter
    from mlx_lama.cli._workspace import quiet_hub_logging
    from mlx_lama.cli.daemonclient import daemon_for
    from mlx_lama.orchestrator.plan import ActionKind
    from mlx_lama.orchestrator.reconcile import reconcile
    from mlx_lama.schema import load_manifest

    manifest = load_manifest(manifest_path)
    daemon = daemon_for(manifest_path, manifest.server.api_key)
    cache_dir = paths.hf_hub_cache()
    quiet_hub_logging()
    with ApplyReporter() as reporter:
        result = reconcile(
            manifest_path,
            cache_dir=cache_dir,
            reporter=reporter,
            ready_timeout=timeout,
            models=models,
            only=ActionKind.PULL if daemon is not None else None,
        )
    if result is not None and not result.ok:
        failed = "; ".join(
            f"{o.action.kind.value} {o.action.target}: {o.detail}" for o in result.failures
        )
        raise MlxLamaError(
            failed, hint="the manifest keeps the change; fix the cause and run `mlx-lama apply`"
        )
    if daemon is None:
        return
    daemon.wait_applied()
    for name in models:
        if name not in manifest.models:
            daemon.wait_model(name, _stopped, timeout=STOP_TIMEOUT, what="stop")
        elif manifest.serve_mode(name) == "always" and not manifest.is_external(name):
            daemon.wait_model(name, _ready, timeout=timeout, what="start")
        elif manifest.serve_mode(name) == "never":
            daemon.wait_model(name, _stopped, timeout=STOP_TIMEOUT, what="stop")
    typer.echo(f"the daemon (pid {daemon.pid}) has applied the change", err=True)


def daemons_part(plan: Plan, observed: ObservedState, project: str) -> tuple[Action, ...]:
    """The actions of ``plan`` on ``project``'s own servers: starts, restarts, and
    stops of servers that project runs (an orphan's stop is not the daemon's)."""
    from mlx_lama.orchestrator.plan import ActionKind

    def mine(action: Action) -> bool:
        if action.server is None:
            return False
        if action.kind is not ActionKind.STOP:
            return True
        running = observed.server(action.server)
        return running is not None and running.project == project

    return tuple(a for a in plan.actions if mine(a))


def hand_off(
    daemon: Daemon, actions: Sequence[Action], reporter: Reporter, *, timeout: float
) -> tuple[Outcome, ...]:
    """Have ``daemon`` apply the manifest now and wait until each of ``actions`` (its
    part of the plan) is done: a started or restarted server ready, a stopped one
    gone. One outcome per action; a daemon that refuses fails them all."""
    from mlx_lama.cli.daemonclient import DaemonError
    from mlx_lama.orchestrator.apply import Outcome
    from mlx_lama.orchestrator.plan import ActionKind

    began = time.monotonic()
    try:
        daemon.apply()
    except DaemonError as error:
        failed = tuple(Outcome(a, False, error.message) for a in actions)
        for outcome in failed:
            reporter.finished(outcome)
        return failed
    outcomes = []
    for action in actions:
        assert action.server is not None  # daemons_part keeps only server actions
        reporter.started(action)
        stop = action.kind is ActionKind.STOP
        try:
            daemon.wait_model(
                action.server,
                _stopped if stop else _ready,
                timeout=STOP_TIMEOUT if stop else timeout,
                what=action.kind.value,
            )
            outcome = Outcome(
                action, True, f"by the daemon, pid {daemon.pid}", time.monotonic() - began
            )
        except DaemonError as error:
            outcome = Outcome(action, False, error.message, time.monotonic() - began)
        reporter.finished(outcome)
        outcomes.append(outcome)
    return tuple(outcomes)


def _ready(entry: dict[str, Any] | None) -> bool:
    return isinstance(entry, dict) and entry.get("state") == "ready"


def _stopped(entry: dict[str, Any] | None) -> bool:
    return entry is None or entry.get("state") in ("stopped", "not downloaded")
