"""After a verb edits the manifest: make the machine match, for the models it touched.

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

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

from mlx_lama.cli._common import DEFAULT_READY_TIMEOUT
from mlx_lama.errors import MlxLamaError


def settle(
    manifest_path: Path, models: Sequence[str], *, timeout: float = DEFAULT_READY_TIMEOUT
) -> None:
    """Pull, then start or stop ``models`` as ``manifest_path`` now says, directly or
    through the daemon serving that file. Raises MlxLamaError when something failed."""
    from mlx_lama import paths
    from mlx_lama.cli._progress import ApplyReporter
    from mlx_lama.cli._workspace import quiet_hub_logging
    from mlx_lama.daemonclient import daemon_for
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
            daemon.wait_model(name, _stopped, timeout=60.0, what="stop")
        elif manifest.serve_mode(name) == "always" and not manifest.is_external(name):
            daemon.wait_model(name, _ready, timeout=timeout, what="start")
        elif manifest.serve_mode(name) == "never":
            daemon.wait_model(name, _stopped, timeout=60.0, what="stop")
    typer.echo(f"the daemon (pid {daemon.pid}) has applied the change", err=True)


def _ready(entry: dict[str, Any] | None) -> bool:
    return isinstance(entry, dict) and entry.get("state") == "ready"


def _stopped(entry: dict[str, Any] | None) -> bool:
    return entry is None or entry.get("state") in ("stopped", "not downloaded")
