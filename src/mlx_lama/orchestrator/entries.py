"""What the model-management verbs do to the manifest, its lock and the cache.

Shared by the CLI verbs (``pull``, ``rm``, ``run``) and the gateway's
``/api/pull`` and ``/api/delete``, so both leave the same files behind:

- :func:`pull_source` says which repo and revision a name means, and whether
  the manifest has it already;
- :func:`record_pull` writes a downloaded model into the manifest (when new)
  and its commit into the lock;
- :func:`remove_entry` takes a model (and the aliases that lead to it) out of
  the manifest and the lock, and says whether another of its models still uses
  the files;
- :func:`free_files` deletes them, unless something else claims them (see
  :mod:`mlx_lama.orchestrator.claims`), and says why when it keeps them.

Manifest edits go through :mod:`mlx_lama.schema.editor` (comments kept,
validated, atomic) under the apply lock. Nothing here starts or stops servers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mlx_lama.filelock import apply_lock
from mlx_lama.registry import load_registry
from mlx_lama.schema import editor, load_manifest
from mlx_lama.schema.lockfile import (
    LockedModel,
    lock_path_for,
    lockable_names,
    read_lock,
    save_lock,
)
from mlx_lama.schema.manifest import Manifest
from mlx_lama.schema.modelfile import ParsedModelfile


@dataclass(frozen=True, slots=True)
class PullSource:
    """What pulling ``name`` means: download ``repo@revision`` (nothing when ``repo``
    is None: a local folder or an external server), for manifest model ``existing``
    or for a new entry called ``name``."""

    name: str
    repo: str | None
    revision: str
    existing: str | None
    embedding: bool = False  # an alias of an embedding model named it

    @property
    def key(self) -> str:
        """The manifest name the pull ends up under."""
        return self.existing or self.name


def pull_source(manifest: Manifest, name: str) -> PullSource:
    """Resolve ``name`` as a manifest model, an alias (of the manifest, the user's
    registry or the built-in table) or a repo id. Raises the registry's
    :class:`~mlx_lama.registry.UnknownModelError` or
    :class:`~mlx_lama.registry.InvalidModelNameError`."""
    existing = editor.find_model_key(manifest, name)
    if existing is None:
        registry = load_registry(
            manifest_aliases=manifest.aliases, manifest_models=manifest.models.keys()
        )
        resolution = registry.resolve(name)
        if resolution.model is None:
            alias = resolution.alias
            embedding = alias is not None and alias.kind == "embedding"
            return PullSource(name, resolution.target, "main", None, embedding)
        existing = resolution.model  # an alias of a manifest model
    entry = manifest.models[existing]
    return PullSource(name, entry.repo, entry.revision or "main", existing)


def record_pull(
    manifest_path: Path,
    source: PullSource,
    locked: LockedModel | None,
    *,
    fields: Mapping[str, object] | None = None,
) -> Manifest:
    """After a download: add a new model with ``repo`` (and ``kind = "embedding"``
    for an embedding model: its alias says so, or its files do) then ``fields``, in
    order, to the manifest, or set ``fields`` on the existing one, and write the
    commit to the lock. One apply-lock hold, so concurrent pulls never lose each
    other's edits. The project is remembered, so other projects' prunes keep what
    it names."""
    from mlx_lama.orchestrator import projects
    from mlx_lama.orchestrator.facts import embedding_files

    projects.remember(manifest_path)
    with apply_lock():
        if source.existing is None:
            if locked is None:
                raise ValueError("a new manifest model needs the repo it was pulled from")
            new: dict[str, object] = {"repo": locked.repo}
            if source.embedding or embedding_files(path for path, _size in locked.files):
                new["kind"] = "embedding"
            manifest = editor.add_model(manifest_path, source.name, {**new, **(fields or {})})
        elif fields:
            manifest = editor.set_model_fields(manifest_path, source.existing, fields)
        else:
            manifest = load_manifest(manifest_path)
        if locked is not None:
            entry = LockedModel(
                source.key, locked.repo, locked.revision, locked.commit, locked.files
            )
            lock_path = lock_path_for(manifest_path)
            lock = read_lock(lock_path).with_models([entry], keep=lockable_names(manifest))
            save_lock(lock_path, lock)
    return manifest


@dataclass(frozen=True, slots=True)
class Removed:
    """What :func:`remove_entry` did: the aliases that went with the model, and the
    repo whose files :func:`free_files` may delete (None: none may; see
    :func:`remove_entry`)."""

    model: str
    aliases: tuple[str, ...]
    repo: str | None
    kept_because: str | None  # why the files stay, when the model had a repo


def remove_entry(manifest_path: Path, model: str) -> Removed:
    """Remove manifest model ``model`` and every alias leading to it from the manifest,
    and its entry from the lock.

    Its repo is offered to :func:`free_files` unless another model left in the
    manifest uses the same repo.
    """
    with apply_lock():
        repo = load_manifest(manifest_path).models[model].repo
        manifest, aliases = editor.remove_model(manifest_path, model)
        lock_path = lock_path_for(manifest_path)
        save_lock(lock_path, read_lock(lock_path).with_models((), keep=lockable_names(manifest)))
    if repo is None:
        return Removed(model, aliases, None, None)
    users = sorted(name for name, entry in manifest.models.items() if entry.repo == repo)
    if users:
        return Removed(model, aliases, None, f"{', '.join(users)} still use {repo}")
    return Removed(model, aliases, repo, None)


@dataclass(frozen=True, slots=True)
class Freed:
    """What :func:`free_files` did: the bytes it freed, or why it kept the files
    (``repo`` is None for a model that had none: a local folder or a server)."""

    repo: str | None
    freed: int = 0
    kept_because: str | None = None


def free_files(repo: str, cache_dir: Path, *, project: str) -> Freed:
    """Delete ``repo`` from the cache and forget that mlx-lama pulled it, unless it
    must stay: mlx-lama did not download it, a known project's manifest (or another
    project's lock) names it, or a running server of another project uses it.
    ``project`` is the manifest key of the project asking. Decided under the
    apply lock, from the files and processes as they are at that moment."""
    from mlx_lama.orchestrator import cache, claims, pulled
    from mlx_lama.orchestrator.observe import observe_servers

    with apply_lock():
        kept = claims.gather(project, observe_servers()).why_kept(repo, pulled.read_pulled())
        if kept is not None:
            return Freed(repo, kept_because=kept)
        freed = cache.remove_repo(repo, cache_dir)
        pulled.forget_pulled(repo)
    return Freed(repo, freed=freed)


def free_removed(removed: Removed, cache_dir: Path, *, project: str) -> Freed:
    """What becomes of the files of a model :func:`remove_entry` took out: freed by
    :func:`free_files`, or kept, with why (another model of the manifest uses them,
    or something :func:`free_files` honours claims them)."""
    if removed.repo is None:
        return Freed(None, kept_because=removed.kept_because)
    return free_files(removed.repo, cache_dir, project=project)


def create_entry(manifest_path: Path, name: str, parsed: ParsedModelfile, base_dir: Path) -> str:
    """Write what the Modelfile ``parsed`` says as model ``name`` of the manifest at
    ``manifest_path`` (FROM and ADAPTER paths relative to ``base_dir``), as ``ollama
    create`` does: a new entry, or an existing one's Modelfile settings replaced (its
    serve, port, keep_alive, pin, args and env stay; the backend too, unless FROM
    brought one). Returns its manifest key. Raises ModelfileError for a FROM or
    ADAPTER that is not found, ManifestEditError for an edit the manifest refuses."""
    from mlx_lama.registry import name_resolver
    from mlx_lama.schema.editor import add_model, find_model_key, set_model_fields
    from mlx_lama.schema.modelfile_entry import MODELFILE_KEYS, model_fields, modelfile_entry

    current = load_manifest(manifest_path)
    entry = modelfile_entry(
        parsed,
        modelfile_dir=base_dir,
        manifest=current,
        manifest_dir=manifest_path.absolute().parent,
        resolve=name_resolver(current.aliases, current.models),
    )
    fields = model_fields(entry)
    for text in ("system", "template", "license"):
        if text in fields:
            fields[text] = _readable(fields[text])
    key = find_model_key(current, name)
    if key is None:
        add_model(manifest_path, name, fields)
        return name
    replaced = [k for k in MODELFILE_KEYS if k != "backend" or "backend" in fields]
    set_model_fields(manifest_path, key, {k: fields.get(k) for k in replaced})
    return key


def _readable(value: object) -> object:
    """Multi-line texts as TOML multi-line strings, so the manifest reads like the
    Modelfile (except where TOML would change them: a leading newline, a carriage return)."""
    import tomlkit

    if isinstance(value, list):
        return [_readable(item) for item in value]
    if (
        isinstance(value, str)
        and "\n" in value
        and not value.startswith("\n")
        and "\r" not in value
    ):
        return tomlkit.string(value, multiline=True)
    return value
