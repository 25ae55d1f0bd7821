"""The plan for a manifest file (:func:`plan_for`), and one apply of it with no
questions asked (:func:`reconcile`): the daemon's and the verbs'.

:func:`plan_for` is the one way a plan is made: ``mlx-lama plan`` and
``apply``, the verbs and the daemon's hot reload all call it, so the same
manifest change on the same machine gives the same plan whoever looks.
``mlx-lama apply`` shows its plan and asks before it stops anything; the
daemon (at start, and for the pulls the manifest adds) and the verbs that
edit the manifest (``pull``, ``rm``, ``serve MODEL``, ``stop``, ...) have
their go-ahead already, and apply only what concerns them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from pathlib import Path

from mlx_lama import machine
from mlx_lama.filelock import apply_lock
from mlx_lama.orchestrator.apply import ApplyContext, ApplyResult, Reporter, apply_plan
from mlx_lama.orchestrator.desired import desired
from mlx_lama.orchestrator.memory import budget_bytes, fit_warnings, server_estimate
from mlx_lama.orchestrator.observe import observe
from mlx_lama.orchestrator.plan import Action, ActionKind, Plan, PlanOptions, make_plan
from mlx_lama.orchestrator.projects import project_key
from mlx_lama.orchestrator.state import DesiredState, ObservedState
from mlx_lama.schema import load_manifest
from mlx_lama.schema.lockfile import Lock, lock_path_for, read_lock
from mlx_lama.schema.manifest import Manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Planned:
    """A plan and the two states it was made from."""

    desired: DesiredState
    observed: ObservedState
    plan: Plan


def plan_for(
    manifest_path: Path,
    manifest: Manifest,
    lock: Lock,
    *,
    cache_dir: Path,
    options: PlanOptions | None = None,
    probe_externals: bool = False,
) -> Planned:
    """What it takes to make this machine match ``manifest`` (read from
    ``manifest_path``, with its ``lock``), for that manifest's project only.
    ``probe_externals``: also ask each external server whether it answers (only
    warnings come of it, never actions)."""
    project = project_key(manifest_path)
    wanted = desired(
        manifest, lock, manifest_dir=manifest_path.parent, cache_dir=cache_dir, project=project
    )
    externals = wanted.externals if probe_externals else ()
    observed = observe(cache_dir=cache_dir, externals=externals, project=project)
    plan = make_plan(wanted, observed, options or PlanOptions())
    budget = budget_bytes(
        manifest.server.memory_budget, machine.total_memory(), machine.gpu_wired_limit()
    )
    estimates = {spec.name: server_estimate(spec) for spec in wanted.servers}
    if too_big := fit_warnings(estimates, budget):  # said before a start fails on it
        plan = replace(plan, notes=(*plan.notes, *too_big))
    return Planned(wanted, observed, plan)


def reconcile(
    manifest_path: Path,
    *,
    cache_dir: Path,
    reporter: Reporter | None = None,
    on_plan: Callable[[Plan], None] | None = None,
    ready_timeout: float = 300.0,
    only: ActionKind | None = None,
    models: Collection[str] | None = None,
) -> ApplyResult | None:
    """One apply of the manifest (no pruning of files), or of its ``only`` actions
    (the daemon pulls this way; external servers are then not probed), or of the
    actions for manifest models ``models`` (and servers of those names: a removed
    model's). None when nothing needed doing."""
    with apply_lock():
        manifest = load_manifest(manifest_path)
        lock = read_lock(lock_path_for(manifest_path))
        planned = plan_for(
            manifest_path,
            manifest,
            lock,
            cache_dir=cache_dir,
            probe_externals=only is None and models is None,
        )
        for warning in planned.observed.warnings:
            log.warning("%s", warning)
        plan = planned.plan
        if only is not None:
            plan = Plan(plan.of(only))
        if models is not None:
            plan = Plan(tuple(a for a in plan.actions if _concerns(a, models)))
        if on_plan is not None:
            on_plan(plan)
        if plan.empty:
            return None
        context = ApplyContext(
            manifest=manifest,
            manifest_path=manifest_path,
            lock=lock,
            desired=planned.desired,
            observed=planned.observed,
            cache_dir=cache_dir,
            write_lock=True,
        )
        return apply_plan(plan, context, reporter=reporter, ready_timeout=ready_timeout)


def _concerns(action: Action, models: Collection[str]) -> bool:
    return action.model in models or action.server in models
