"""Load what the reconciler commands share: manifest, lock, desired and observed state.

Used by ``plan``, ``apply``, ``lock``, ``list`` and ``ps``; keeps their bodies to
parse → call → render.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import typer

from mlx_lama import paths
from mlx_lama.orchestrator.desired import desired
from mlx_lama.orchestrator.observe import observe
from mlx_lama.orchestrator.plan import PlanOptions
from mlx_lama.orchestrator.projects import project_key
from mlx_lama.orchestrator.reconcile import Planned, plan_for
from mlx_lama.orchestrator.state import DesiredState, ObservedState
from mlx_lama.schema import ManifestLocation, find_manifest, load_manifest
from mlx_lama.schema.lockfile import Lock, lock_path_for, read_lock
from mlx_lama.schema.manifest import Manifest


@dataclass(frozen=True, slots=True)
class Workspace:
    location: ManifestLocation
    manifest: Manifest
    lock: Lock
    cache_dir: Path

    @property
    def manifest_path(self) -> Path:
        return self.location.path

    @property
    def project(self) -> str:
        """The project this manifest is (its real path)."""
        return project_key(self.manifest_path)

    @property
    def lock_path(self) -> Path:
        return lock_path_for(self.location.path)

    def desired(self, lock: Lock | None = None) -> DesiredState:
        return desired(
            self.manifest,
            self.lock if lock is None else lock,
            manifest_dir=self.manifest_path.parent,
            cache_dir=self.cache_dir,
            project=self.project,
        )


def load_workspace(file: Path | None) -> Workspace:
    location = find_manifest(file)
    manifest = load_manifest(location.path)
    return Workspace(
        location=location,
        manifest=manifest,
        lock=read_lock(lock_path_for(location.path)),
        cache_dir=paths.hf_hub_cache(),
    )


def observe_and_warn(
    workspace: Workspace, desired: DesiredState, *, hosts: bool = False
) -> ObservedState:
    """Observe (probing ``desired``'s external servers), printing each warning on
    stderr (see :func:`warn_observed`)."""
    observed = observe(
        cache_dir=workspace.cache_dir, externals=desired.externals, project=desired.project
    )
    warn_observed(desired, observed, hosts=hosts)
    return observed


def plan_and_warn(workspace: Workspace, options: PlanOptions) -> Planned:
    """The plan for the workspace's manifest (``orchestrator.reconcile.plan_for``,
    external servers probed), printing each warning on stderr; the distributed
    servers' other hosts are checked over ssh for the model files."""
    planned = plan_for(
        workspace.manifest_path,
        workspace.manifest,
        workspace.lock,
        cache_dir=workspace.cache_dir,
        options=options,
        probe_externals=True,
    )
    warn_observed(planned.desired, planned.observed, hosts=True)
    return planned


def warn_observed(desired: DesiredState, observed: ObservedState, *, hosts: bool) -> None:
    """Print each of ``observed``'s warnings on stderr; with ``hosts``, also check over
    ssh that the other hosts of each distributed server have its model files."""
    warnings = list(observed.warnings)
    if hosts and any(s.distribution is not None for s in desired.servers):
        from mlx_lama.orchestrator.hostfiles import check_hosts

        warnings += [h.warning() for h in check_hosts(desired.servers) if not h.complete]
    for warning in warnings:
        typer.echo(f"warning: {warning}", err=True)


def warn_unanswering_remotes(manifest: Manifest) -> None:
    """Probe the manifest's ``[remotes]`` (as ``observe`` probes external servers),
    printing a warning on stderr for each that does not answer."""
    if not manifest.remotes:
        return
    from mlx_lama.gateway.remotes import probe_remotes

    for status in probe_remotes(manifest.remotes):
        if not status.answering:
            typer.echo(f"warning: {status.warning()}", err=True)


def quiet_hub_logging() -> None:
    """huggingface_hub logs its retries straight to stderr, through our progress
    bars; our own messages already name each failure."""
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
