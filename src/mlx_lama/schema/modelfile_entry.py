"""A parsed Modelfile as a manifest entry, and an entry's Modelfile keys.

``mlx-lama create`` calls :func:`modelfile_entry` on what
:func:`~mlx_lama.schema.modelfile.parse_modelfile` read (it resolves FROM and
ADAPTER against the disk, the manifest and the alias registry), then
:func:`model_fields` (the ordered keys the editor writes).

Paths (FROM a folder, ADAPTER) are relative to the Modelfile's folder, with
``~`` expanded. They are stored in the manifest as ``./relative`` when they lie
under the manifest's folder (the manifest stays movable with its models), as
written when they start with ``~``, and absolute otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Final

from mlx_lama.errors import MlxLamaError, Problem
from mlx_lama.names import check_model_name, is_repo_id
from mlx_lama.schema.manifest import Manifest, ModelEntry, Parameters
from mlx_lama.schema.modelfile import ModelfileError, ParsedModelfile

__all__ = ["MODELFILE_KEYS", "ResolveName", "model_fields", "modelfile_entry"]

#: The model keys a Modelfile decides, in the order ``model_fields`` writes them.
MODELFILE_KEYS: Final = (
    "repo", "path", "url", "revision", "backend",
    "system", "template", "adapter", "license", "messages", "parameters",
)  # fmt: skip

_FROM_HINT = (
    "FROM takes a folder of MLX weights (relative to the Modelfile), a Hugging Face repo id "
    "(org/name), or a model or alias of the manifest"
)

# Resolves a FROM name to (manifest model, repo id), one of them set; raises
# MlxLamaError for a name that is neither. ``registry.name_resolver`` makes one.
ResolveName = Callable[[str], tuple[str | None, str | None]]


def modelfile_entry(
    parsed: ParsedModelfile,
    *,
    modelfile_dir: Path,
    manifest: Manifest,
    manifest_dir: Path,
    resolve: ResolveName,
) -> ModelEntry:
    """The manifest entry a Modelfile stands for.

    FROM is, in this order: an existing folder (relative to ``modelfile_dir``,
    ``~`` expanded); ``org/name@revision`` (a repo at a branch, tag or commit,
    mlx-lama's own form, which ``render_modelfile`` writes for a pinned revision);
    a model or alias of ``manifest``, whose source (repo, path,
    url, revision, backend) and settings (system, template, adapter, license,
    messages, parameters) the entry starts from, the Modelfile's instructions
    overriding them (parameters key by key); a Hugging Face repo id; a user or
    built-in alias (``resolve`` looks those up). Reads the disk; raises
    :class:`ModelfileError` naming the FROM and ADAPTER lines at fault.
    """
    problems: list[Problem] = []
    base = _base_entry(parsed, modelfile_dir, manifest, manifest_dir, resolve, problems)
    adapter = base.adapter
    if parsed.adapter is not None:
        stored, found = _stored_path(parsed.adapter, modelfile_dir, manifest_dir)
        if not found.exists():
            problems.append(
                Problem(
                    parsed.source,
                    parsed.adapter_line,
                    1,
                    "ADAPTER",
                    f"no adapter at {found}",
                    "ADAPTER takes a LoRA adapter folder, relative to the Modelfile",
                )
            )
        adapter = stored
    if problems:
        raise ModelfileError(parsed.source, problems)
    parameters = {**base.parameters.as_dict(), **parsed.parameters.as_dict()}
    return replace(
        base,
        system=parsed.system if parsed.system is not None else base.system,
        template=parsed.template if parsed.template is not None else base.template,
        adapter=adapter,
        license=list(parsed.license) if parsed.license else base.license,
        messages=list(parsed.messages) if parsed.messages else base.messages,
        parameters=Parameters.from_data(parameters),
    )


def _base_entry(
    parsed: ParsedModelfile,
    modelfile_dir: Path,
    manifest: Manifest,
    manifest_dir: Path,
    resolve: ResolveName,
    problems: list[Problem],
) -> ModelEntry:
    """What FROM names, as an entry holding only its source and settings."""
    value = parsed.base
    stored, found = _stored_path(value, modelfile_dir, manifest_dir)
    if found.is_dir():
        return ModelEntry(path=stored)

    def problem(message: str, hint: str = _FROM_HINT) -> ModelEntry:
        problems.append(Problem(parsed.source, parsed.base_line, 1, "FROM", message, hint))
        return ModelEntry()

    if found.exists():
        return problem(
            f"{found} is a file", "mlx-lama serves folders of MLX weights (safetensors), not GGUF"
        )
    repo, at, revision = value.partition("@")
    if at and revision and is_repo_id(repo):  # mlx-lama's own form: a repo at a revision
        return ModelEntry(repo=repo, revision=revision)
    try:
        model, resolved_repo = resolve(value)
    except MlxLamaError as error:
        if check_model_name(value) is not None:
            return problem(f"no folder at {found}, and {value!r} is not a model name")
        return problem(f"FROM {value}: {error.message}")
    if model is None:
        return ModelEntry(repo=resolved_repo)
    source = manifest.models[model]
    return ModelEntry(
        repo=source.repo,
        path=source.path,
        url=source.url,
        revision=source.revision,
        backend=source.backend,
        system=source.system,
        template=source.template,
        adapter=source.adapter,
        license=list(source.license),
        messages=list(source.messages),
        parameters=source.parameters,
    )


def _stored_path(text: str, modelfile_dir: Path, manifest_dir: Path) -> tuple[str, Path]:
    """A path as the manifest should store it, and where it points (see the module doc)."""
    expanded = Path(text).expanduser()
    found = Path(os.path.normpath(expanded if expanded.is_absolute() else modelfile_dir / expanded))
    if text.startswith("~"):
        return text, found
    home = Path(os.path.normpath(manifest_dir.absolute()))
    if found.is_relative_to(home):
        relative = found.relative_to(home).as_posix()
        return ("./" + relative if relative != "." else "."), found
    return str(found), found


def model_fields(entry: ModelEntry) -> dict[str, object]:
    """The entry's Modelfile keys that are set, in :data:`MODELFILE_KEYS` order, as
    plain values the editor writes (messages as tables, parameters as a table). Pure."""
    values: dict[str, object] = {
        "repo": entry.repo,
        "path": entry.path,
        "url": entry.url,
        "revision": entry.revision,
        "backend": entry.backend,
        "system": entry.system,
        "template": entry.template,
        "adapter": entry.adapter,
        "license": list(entry.license) or None,
        "messages": [{"role": m.role, "content": m.content} for m in entry.messages] or None,
        "parameters": entry.parameters.as_dict() or None,
    }
    return {key: values[key] for key in MODELFILE_KEYS if values[key] is not None}
