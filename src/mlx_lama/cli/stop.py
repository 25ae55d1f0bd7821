"""``mlx-lama stop MODEL``: unload a model now, or stop serving it for good.

Which of the two stopping a model means is decided by :func:`how_to_stop`
alone; ``top``'s ``s`` key uses it too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

import typer

from mlx_lama.cli._app import app
from mlx_lama.cli._common import ManifestFile, handles_errors
from mlx_lama.errors import MlxLamaError

if TYPE_CHECKING:
    from pathlib import Path

    from mlx_lama.cli.daemonclient import Daemon
    from mlx_lama.schema.manifest import Manifest

StopWay = Literal["serve never", "unload"]


@app.command()
@handles_errors
def stop(
    model: Annotated[
        str, typer.Argument(help="A model or alias of the manifest.", metavar="MODEL")
    ],
    file: ManifestFile = None,
) -> None:
    """Stop a model's server.

    An on-demand model is unloaded now, as `ollama stop` does; its next
    request starts it again. A model served "always" gets serve = "never" in
    the manifest (its server would come back otherwise); `mlx-lama serve
    MODEL` serves it again.
    """
    from mlx_lama.cli._handoff import settle
    from mlx_lama.cli.daemonclient import daemon_for
    from mlx_lama.registry import UnknownModelError, load_registry
    from mlx_lama.schema import editor, find_manifest, load_manifest

    path = find_manifest(file).path
    manifest = load_manifest(path)
    key = editor.find_model_key(manifest, model)
    if key is None:  # an alias of a manifest model
        registry = load_registry(
            manifest_aliases=manifest.aliases, manifest_models=manifest.models.keys()
        )
        key = registry.resolve(model).model
    if key is None:
        raise UnknownModelError(model, sorted(manifest.models))
    if how_to_stop(manifest, key) == "serve never":
        editor.set_model_fields(path, key, {"serve": "never"})
        settle(path, [key])
        typer.echo(f'stopped {key!r}; it has serve = "never" in {path.name} now', err=True)
        return
    daemon = daemon_for(path, manifest.server.api_key)
    if daemon is not None:
        _unload(daemon, key)
    elif not _stop_leftover(key, path):
        raise MlxLamaError(f"couldn't find model {model!r} to stop: it is not running")
    typer.echo(f"stopped {key!r}", err=True)


def how_to_stop(manifest: Manifest, key: str) -> StopWay:
    """What stopping manifest model ``key`` means, for ``mlx-lama stop`` and ``top``:
    a model served "always" gets ``serve = "never"`` in the manifest (its server
    would come back otherwise); any other is unloaded now, as ``ollama stop`` does,
    and its next request starts it again. Raises MlxLamaError for an external
    model, which mlx-lama does not run."""
    if manifest.is_external(key):
        raise MlxLamaError(
            f"{key!r} is served by {manifest.models[key].url}, which mlx-lama does not run",
            hint="stop it where it was started",
        )
    return "serve never" if manifest.serve_mode(key) == "always" else "unload"


def request_unload(daemon: Daemon, key: str) -> None:
    """Ask the daemon to unload ``key`` now (Ollama's ``keep_alive: 0``), without
    waiting for its server to stop. Raises DaemonError when the daemon refuses."""
    from mlx_lama.cli.daemonclient import DaemonError

    body = {"model": key, "keep_alive": 0, "stream": False}
    reply = daemon.request("POST", "/api/generate", body, timeout=60.0)
    if reply.status != 200:
        raise DaemonError(f"the daemon refused to unload {key!r}: {reply.error_text()}")


def _unload(daemon: Daemon, key: str) -> None:
    """Unload running model ``key`` through the daemon and wait until it has stopped."""
    entry = daemon.health().get("models", {}).get(key)
    if not isinstance(entry, dict) or entry.get("state") in ("stopped", "not downloaded"):
        raise MlxLamaError(f"couldn't find model {key!r} to stop: it is not running")
    request_unload(daemon, key)
    daemon.wait_model(
        key,
        lambda e: e is None or e.get("state") in ("stopped", "not downloaded"),
        timeout=60.0,
        what="stop",
    )


def _stop_leftover(key: str, manifest: Path) -> bool:
    """Without a daemon: stop a server of ``key`` that this project started and that
    still runs (one a killed daemon left behind). False when there is none."""
    from mlx_lama.orchestrator import process

    record = process.running_record(key, manifest=str(manifest))
    if record is None:
        return False
    process.stop_server(record)
    return True
