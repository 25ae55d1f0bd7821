"""What the manifest asks for, resolved against its lock: :class:`DesiredState`.

Called by ``plan``/``apply`` (and later the daemon) after loading the
manifest and lock. Pure: no I/O, no logging; folders are passed in.
"""

from __future__ import annotations

import os
from pathlib import Path

from mlx_lama.orchestrator.facts import embedding_files
from mlx_lama.orchestrator.state import (
    DesiredState,
    Distribution,
    ExternalSpec,
    ModelSpec,
    ServerSpec,
    snapshot_folder,
)
from mlx_lama.schema.lockfile import Lock
from mlx_lama.schema.manifest import Manifest, ModelEntry

DEFAULT_REVISION = "main"
BACKEND_HOST = "127.0.0.1"  # engines only ever listen on loopback; the gateway is the door


def desired(
    manifest: Manifest, lock: Lock, *, manifest_dir: Path, cache_dir: Path, project: str = ""
) -> DesiredState:
    """Resolve every model to repo + revision (+ locked commit and files) and every
    served model to a :class:`ServerSpec`. The lock wins when it matches the
    manifest's repo and revision; otherwise the model is unresolved (commit None).
    External models become :class:`ExternalSpec` only: never pulled, never started.
    ``project`` (the manifest's key) says whose servers are these. The notes say
    where the user's settings decided something the manifest does not. Pure."""
    models = tuple(
        model_spec(name, entry, lock, manifest_dir)
        for name, entry in sorted(manifest.models.items())
        if not manifest.is_external(name)
    )
    servers = tuple(
        server_spec(manifest, spec, manifest_dir=manifest_dir, cache_dir=cache_dir)
        for spec in models
        if manifest.serve_mode(spec.name) != "never"
    )
    return DesiredState(
        models=models,
        servers=servers,
        externals=external_specs(manifest),
        project=project,
        notes=(*user_setting_notes(manifest, servers), *kind_notes(manifest, models)),
    )


def kind_notes(manifest: Manifest, models: tuple[ModelSpec, ...]) -> tuple[str, ...]:
    """Models whose locked files say they embed (a sentence-transformers pipeline)
    while their entry does not: a text engine would fail to load them. Pure."""
    unmarked = sorted(
        spec.name
        for spec in models
        if not manifest.is_embedding(spec.name)
        and manifest.models[spec.name].backend is None
        and embedding_files(path for path, _size in spec.files)
    )
    if not unmarked:
        return ()
    return (
        f"{_names(unmarked)} {'looks' if len(unmarked) == 1 else 'look'} like an embedding "
        'model (a sentence-transformers pipeline in its files): add kind = "embedding" '
        "to serve it on mlx-embeddings",
    )


def user_setting_notes(manifest: Manifest, servers: tuple[ServerSpec, ...]) -> tuple[str, ...]:
    """What this machine's user settings decide for ``manifest``: a checked-in manifest
    then behaves differently on another machine, so the plan says so. Pure."""
    notes = []
    by_user = sorted(name for name in manifest.models if manifest.backend_from_user(name))
    if by_user:
        notes.append(
            f"{_names(by_user)}: backend {manifest.user_backend}, the default_backend of "
            "this machine's user settings (the manifest names none; `mlx-lama config` "
            "shows where it is set)"
        )
    placed = sorted(s.name for s in servers if s.port is None and s.first_port is not None)
    if placed:
        notes.append(
            f"{_names(placed)}: the first free port from {manifest.user_port}, the "
            "default_port of this machine's user settings (the manifest gives none)"
        )
    return tuple(notes)


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return ("model " if len(names) == 1 else "models ") + shown


def taken_ports(manifest: Manifest) -> tuple[int, ...]:
    """The ports the manifest declares: its gateway's and its servers'. Pure."""
    declared = {entry.port for entry in manifest.models.values() if entry.port is not None}
    return tuple(sorted({manifest.server.port, *declared}))


def external_specs(manifest: Manifest) -> tuple[ExternalSpec, ...]:
    """The manifest's external models, sorted by name (all ``ps`` needs). Pure."""
    return tuple(
        ExternalSpec(name=name, url=entry.url or "")
        for name, entry in sorted(manifest.models.items())
        if manifest.is_external(name)
    )


def model_spec(name: str, entry: ModelEntry, lock: Lock, manifest_dir: Path) -> ModelSpec:
    """One manifest entry as a :class:`ModelSpec`. Pure."""
    if entry.repo is None:
        return ModelSpec(
            name=name, repo=None, revision="", path=local_path(entry.path or "", manifest_dir)
        )
    revision = entry.revision or DEFAULT_REVISION
    locked = lock.get(name)
    if locked is None or locked.repo != entry.repo or locked.revision != revision:
        return ModelSpec(name=name, repo=entry.repo, revision=revision)
    return ModelSpec(
        name=name, repo=entry.repo, revision=revision, commit=locked.commit, files=locked.files
    )


def server_spec(
    manifest: Manifest, model: ModelSpec, *, manifest_dir: Path, cache_dir: Path
) -> ServerSpec:
    """The launch spec of ``model``'s server. Pure."""
    entry = manifest.models[model.name]
    backend = manifest.backend_of(model.name)
    section = manifest.backends.get(backend)
    args = (*(section.args if section else ()), *entry.args)
    env = {**(section.env if section else {}), **entry.env}
    parameters = manifest.parameters_of(model.name)
    if model.path is not None:
        model_path: Path | None = model.path
    elif model.repo is not None and model.commit is not None:
        model_path = snapshot_folder(cache_dir, model.repo, model.commit)
    else:
        model_path = None
    return ServerSpec(
        name=model.name,
        model=model.name,
        backend=backend,
        engine=manifest.backend_type(backend),
        serve=manifest.serve_mode(model.name),
        model_path=model_path,
        repo=model.repo,
        commit=model.commit,
        host=BACKEND_HOST,
        port=entry.port,
        args=tuple(args),
        env=tuple(sorted(env.items())),
        parameters=tuple(
            (key, tuple(value) if isinstance(value, list) else value)  # type: ignore[misc]
            for key, value in sorted(parameters.items())
        ),
        adapter=local_path(entry.adapter, manifest_dir) if entry.adapter else None,
        template=entry.template,
        distribution=distribution(entry, manifest_dir),
        kv_cache=manifest.kv_cache_of(model.name),
        first_port=manifest.user_port if entry.port is None else None,
        taken_ports=taken_ports(manifest) if entry.port is None and manifest.user_port else (),
    )


def distribution(entry: ModelEntry, manifest_dir: Path) -> Distribution | None:
    """How ``entry`` is sharded over several hosts, or None when it runs here. Pure."""
    if not entry.is_distributed:
        return None
    return Distribution(
        backend=entry.distributed or "ring",
        hosts=tuple(entry.hosts),
        hostfile=local_path(entry.hostfile, manifest_dir) if entry.hostfile else None,
        pipeline=entry.pipeline,
        files=entry.files,
        ring_port=entry.ring_port,
    )


def local_path(text: str, manifest_dir: Path) -> Path:
    """A path from the manifest: ``~`` expanded (from $HOME), relative to the manifest's folder."""
    path = Path(text).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else manifest_dir / path))
