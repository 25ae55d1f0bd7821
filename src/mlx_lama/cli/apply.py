"""``mlx-lama apply``: make the machine match the manifest, after showing the plan.

With ``--watch`` it then keeps the machine matching: each save of the manifest
or its lock (see :mod:`mlx_lama.orchestrator.watch`) is one more apply. Both
paths run the same :func:`_apply_once`; the watch adds only the loop, its
messages and the signal handling around it.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from mlx_lama.cli._app import app
from mlx_lama.cli._common import (
    DEFAULT_READY_TIMEOUT,
    ManifestFile,
    ReadyTimeout,
    debug_enabled,
    exit_interrupted,
    handles_errors,
)
from mlx_lama.cli.plan import Prune, RemoveOrphans
from mlx_lama.errors import MlxLamaError, UsageError

if TYPE_CHECKING:
    from mlx_lama.cli._workspace import Workspace
    from mlx_lama.orchestrator.apply import ApplyResult
    from mlx_lama.orchestrator.watch import Fingerprint


@app.command()
@handles_errors
def apply(
    file: ManifestFile = None,
    prune: Prune = False,
    remove_orphans: RemoveOrphans = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan and stop.")] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Stop servers and remove models without asking.")
    ] = False,
    locked: Annotated[
        bool,
        typer.Option("--locked", help="Fail if mlxlama.lock does not match the manifest."),
    ] = False,
    timeout: ReadyTimeout = DEFAULT_READY_TIMEOUT,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            "-w",
            help="After applying, apply again on every save of the manifest or its lock.",
        ),
    ] = False,
) -> None:
    """Make the machine match the manifest.

    Shows the plan, then stops, removes, pulls and starts in that order, and
    writes mlxlama.lock. Stopping servers and removing models needs --yes
    when there is no terminal to ask on. It acts only on this project's
    servers; --remove-orphans also stops those whose manifest is gone.

    When `mlx-lama serve` serves this manifest, the daemon alone starts and
    stops its servers: apply pulls and removes files itself, then has the
    daemon apply the manifest now (a failed server is tried again) and waits
    until each server in the plan is ready or stopped.

    With --watch it then applies again after each save of the manifest or
    mlxlama.lock, like `serve` without the gateway. Starting the watch and
    each save count as your go-ahead: servers are stopped without asking, and
    with --prune files are removed without asking. A save that does not
    validate, or a deleted manifest, is reported and changes nothing: what
    runs keeps running until a valid save. Ctrl-C or SIGTERM ends the watch
    (exit 0) and leaves the servers running; during an apply it interrupts
    that apply (exit 130). Not with --dry-run or --locked.
    """
    if watch and dry_run:
        raise UsageError(
            "--watch cannot be combined with --dry-run",
            hint="`mlx-lama plan` shows the plan without changing anything",
        )
    if watch and locked:
        raise UsageError(
            "--watch cannot be combined with --locked",
            hint="run `mlx-lama apply --locked` once; --watch writes mlxlama.lock as it goes",
        )
    if watch:
        _watch(
            file,
            _Settings(
                prune=prune, remove_orphans=remove_orphans, timeout=timeout, confirm=_go_ahead
            ),
        )
        return
    settings = _Settings(
        prune=prune,
        remove_orphans=remove_orphans,
        timeout=timeout,
        confirm=_go_ahead if yes else _confirm,
        dry_run=dry_run,
        locked=locked,
    )
    result = _apply_once(file, settings)
    if result is not None and not result.ok:
        raise typer.Exit(1)


@dataclass(frozen=True, slots=True)
class _Settings:
    """How one apply runs; ``confirm(count)`` says whether destructive actions may go ahead."""

    prune: bool
    timeout: float
    confirm: Callable[[int], bool]
    remove_orphans: bool = False
    dry_run: bool = False
    locked: bool = False


def _apply_once(file: Path | None, settings: _Settings) -> ApplyResult | None:
    """Load the manifest, print the plan, carry it out and print the summary.

    Holds the apply lock for that long only. Returns None when nothing was
    applied (a dry run, or an empty plan). Raises MlxLamaError when the
    manifest does not load or names an engine that is not installed.
    """
    from mlx_lama.cli._handoff import daemons_part, hand_off
    from mlx_lama.cli._progress import ApplyReporter
    from mlx_lama.cli._workspace import load_workspace, plan_and_warn, quiet_hub_logging
    from mlx_lama.cli.daemonclient import daemon_for
    from mlx_lama.filelock import apply_lock
    from mlx_lama.orchestrator.apply import ApplyContext, apply_plan
    from mlx_lama.orchestrator.engines import require_engines
    from mlx_lama.orchestrator.plan import Plan, PlanOptions
    from mlx_lama.schema.lockfile import check_lock_matches

    def waiting() -> None:
        typer.echo("waiting for another mlx-lama apply to finish...", err=True)

    with apply_lock(on_wait=waiting):
        workspace = load_workspace(file)
        require_engines(workspace.manifest)
        if settings.locked:
            check_lock_matches(workspace.manifest, workspace.lock, workspace.lock_path)
        options = PlanOptions(prune=settings.prune, remove_orphans=settings.remove_orphans)
        planned = plan_and_warn(workspace, options)
        plan = planned.plan
        typer.echo(plan.render(), nl=False)
        if settings.dry_run or plan.empty:
            if plan.empty and not settings.locked:
                _refresh_lock(workspace)
            return None
        # A daemon serving this manifest applies each save itself; it alone starts
        # and stops this project's servers, so those actions are handed to it.
        daemon = daemon_for(workspace.manifest_path, workspace.manifest.server.api_key)
        handed = daemons_part(plan, planned.observed, workspace.project) if daemon else ()
        plan = Plan(tuple(a for a in plan.actions if a not in handed), plan.notes)
        destructive = [a for a in plan.actions if a.kind.destructive]
        allowed = not destructive or settings.confirm(len(destructive))
        context = ApplyContext(
            manifest=workspace.manifest,
            manifest_path=workspace.manifest_path,
            lock=workspace.lock,
            desired=planned.desired,
            observed=planned.observed,
            cache_dir=workspace.cache_dir,
            write_lock=not settings.locked,
        )
        quiet_hub_logging()
        with ApplyReporter() as reporter:
            result = apply_plan(
                plan,
                context,
                reporter=reporter,
                destructive_ok=allowed,
                ready_timeout=settings.timeout,
            )
    if daemon is not None and handed:
        began = time.monotonic()
        with ApplyReporter() as reporter:
            outcomes = hand_off(daemon, handed, reporter, timeout=settings.timeout)
        result = replace(
            result,
            outcomes=result.outcomes + outcomes,
            seconds=result.seconds + time.monotonic() - began,
        )
    _print_result(result)
    return result


def _print_result(result: ApplyResult) -> None:
    """The summary on stdout; what was refused or failed on stderr."""
    for action in result.refused:
        typer.echo(f"refused: {action.kind.value} {action.target} (not confirmed)", err=True)
    if result.refused:
        typer.echo("Rerun with --yes to stop servers and remove models.", err=True)
    typer.echo(result.summary())
    failed = ", ".join(f"{o.action.kind.value} {o.action.target}" for o in result.failures)
    if failed:
        typer.echo(f"Failed: {failed}", err=True)


def _go_ahead(count: int) -> bool:
    return True


def _confirm(count: int) -> bool:
    """Ask on a terminal; without one, destructive actions are refused."""
    if not sys.stdin.isatty():
        return False
    noun = (
        "action stops a server or deletes files"
        if count == 1
        else ("actions stop servers or delete files")
    )
    return typer.confirm(f"{count} {noun}. Go ahead?", default=False, err=True)


def _refresh_lock(workspace: Workspace) -> None:
    """Drop lock entries for models the manifest no longer has (no hub access)."""
    from mlx_lama.schema.lockfile import lockable_names, save_lock

    trimmed = workspace.lock.with_models((), keep=lockable_names(workspace.manifest))
    if trimmed != workspace.lock:
        save_lock(workspace.lock_path, trimmed)


# -- --watch -----------------------------------------------------------------


@dataclass(slots=True)
class _Watch:
    """What the watch loop remembers between saves."""

    manifest: Path
    settings: _Settings
    applied: Fingerprint  # the files as last acted on (our own lock writes included)
    failed: bool = False  # the last apply did not go through: a manifest save retries it


def _watch(file: Path | None, settings: _Settings) -> None:
    """Apply once (an error ends the command, as without --watch), then after each save.

    The apply lock is held only while applying, never while waiting.
    """
    from mlx_lama.orchestrator.watch import fingerprint, watch_manifest_blocking, watched_files
    from mlx_lama.schema import find_manifest

    # Pin the file: rediscovering after a delete could fall back to another manifest.
    manifest = find_manifest(file).path.absolute()
    # watchfiles reports a Ctrl-C it swallows as a warning; our own line says it better.
    logging.getLogger("watchfiles").setLevel(logging.ERROR)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        before = fingerprint(manifest)
        result = _apply_once(manifest, settings)
        state = _Watch(manifest, settings, _acted_on(manifest, before), _failed(result))
        names = " and ".join(path.name for path in watched_files(manifest))
        typer.echo(f"watching {names} in {manifest.parent}; Ctrl-C stops watching", err=True)
        try:
            _catch_up(state)  # saves made while the first apply ran
            for changed in watch_manifest_blocking(manifest):
                if state.failed and any(path.name == manifest.name for path in changed):
                    _apply_save(state, fingerprint(manifest))  # even an identical save retries
                _catch_up(state)
        except KeyboardInterrupt:  # between applies; watchfiles swallows it while waiting
            pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    typer.echo("stopped watching; servers keep running", err=True)


def _interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    """SIGTERM ends the watch the way Ctrl-C does."""
    raise KeyboardInterrupt


def _catch_up(state: _Watch) -> None:
    """Apply until what was last acted on is what the files hold."""
    from mlx_lama.orchestrator.watch import fingerprint

    while (current := fingerprint(state.manifest)) != state.applied:
        _apply_save(state, current)


def _apply_save(state: _Watch, current: Fingerprint) -> None:
    """Apply the files as ``current`` describes them, under a timestamped header.

    Never raises MlxLamaError: a manifest that does not load is reported and
    changes nothing. Ctrl-C during it ends the process as a one-shot apply's would.
    """
    from mlx_lama.orchestrator.watch import watched_files

    manifest = state.manifest
    stamp = time.strftime("%H:%M:%S")
    if current[0] is None:
        typer.echo(
            f"[{stamp}] {manifest.name} is gone; nothing was stopped; waiting for it to come back",
            err=True,
        )
        state.applied, state.failed = current, False  # its return is a change anyway
        return
    changed = [
        path.name
        for path, old, new in zip(watched_files(manifest), state.applied, current, strict=True)
        if old != new
    ]
    typer.echo(f"[{stamp}] {', '.join(changed or [manifest.name])} changed: applying", err=True)
    try:
        result = _apply_once(manifest, state.settings)
    except KeyboardInterrupt:
        exit_interrupted()
    except MlxLamaError as error:
        if debug_enabled():
            traceback.print_exc()
        typer.echo(f"error: {error}", err=True)
        typer.echo("keeping what runs; waiting for a valid save", err=True)
        state.applied, state.failed = _acted_on(manifest, current), True
        return
    state.applied, state.failed = _acted_on(manifest, current), _failed(result)
    if state.failed:
        typer.echo("keeping what runs; the next save tries again", err=True)


def _acted_on(manifest: Path, before: Fingerprint) -> Fingerprint:
    """The manifest as read before an apply, the lock as the apply left it: the
    apply's own lock write is then no change, and a save made meanwhile still is."""
    from mlx_lama.orchestrator.watch import fingerprint

    return before[0], fingerprint(manifest)[1]


def _failed(result: ApplyResult | None) -> bool:
    return result is not None and not result.ok
