"""``mlx-lama show MODEL``: what a manifest model is, as ``ollama show`` tells it.

Reads the manifest, its lock and the model's files (``config.json``,
``tokenizer_config.json``) through the same lookup as the gateway's
``/api/show``; changes nothing. Must not import mlx, mlx_lm or uvicorn.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mlx_lama.cli._app import app
from mlx_lama.cli._common import JsonFlag, ManifestFile, handles_errors
from mlx_lama.errors import MlxLamaError, UsageError

if TYPE_CHECKING:
    from mlx_lama.backends.base import Capabilities
    from mlx_lama.gateway.models import JsonObject
    from mlx_lama.orchestrator.facts import ModelFacts
    from mlx_lama.orchestrator.memory import Estimate
    from mlx_lama.orchestrator.state import ModelSpec
    from mlx_lama.schema.manifest import Manifest, ModelEntry

_PREVIEW_LINES = 4  # of System and License in the default view, as ollama show shortens them


def _flag(name: str, what: str) -> object:
    return typer.Option(f"--{name}", help=f"Print only the {what}.")


@app.command()
@handles_errors
def show(
    model: Annotated[
        str, typer.Argument(help="A model or alias of the manifest.", metavar="MODEL")
    ],
    file: ManifestFile = None,
    modelfile: Annotated[bool, _flag("modelfile", "Modelfile")] = False,
    parameters: Annotated[bool, _flag("parameters", "parameters")] = False,
    system: Annotated[bool, _flag("system", "system prompt")] = False,
    template: Annotated[bool, _flag("template", "chat template")] = False,
    license_text: Annotated[bool, _flag("license", "license")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Show a model: architecture, capabilities, parameters, system prompt,
    license, and how the manifest keeps and serves it."""
    from mlx_lama.gateway.models import show_response, takes_images
    from mlx_lama.schema import find_manifest, load_manifest
    from mlx_lama.schema.modelfile_render import parameter_lines, render_modelfile

    chosen = [
        flag
        for flag, on in (
            ("--modelfile", modelfile),
            ("--parameters", parameters),
            ("--system", system),
            ("--template", template),
            ("--license", license_text),
            ("--json", as_json),
        )
        if on
    ]
    if len(chosen) > 1:
        raise UsageError(f"{' and '.join(chosen)} cannot be combined", hint="choose one of them")
    manifest_path = find_manifest(file).path
    manifest = load_manifest(manifest_path)
    name = _resolve(manifest, model, manifest_path)
    entry = manifest.models[name]
    shown = _Shown.of(manifest, name, manifest_path)

    if modelfile:
        typer.echo(render_modelfile(name, shown.portable_entry()), nl=False)
    elif parameters:
        _echo_text("\n".join(parameter_lines(entry)))
    elif system:
        _echo_text(entry.system or "")
    elif template:
        _echo_text(entry.template or shown.facts.chat_template)
    elif license_text:
        _echo_text("\n".join(entry.license))
    elif as_json:
        vision = takes_images(shown.facts.config, shown.engine().vision)
        body = show_response(name, entry, shown.facts, vision=vision)
        body["manifest"] = shown.manifest_json()
        typer.echo(json.dumps(body, indent=2))
    else:
        typer.echo(shown.render(), nl=False)


def _echo_text(text: str) -> None:
    if text:
        typer.echo(text)


def _resolve(manifest: Manifest, wanted: str, manifest_path: Path) -> str:
    """The manifest model ``wanted`` names: the model, an alias of it, ``name:latest``,
    or its repo id (as the gateway resolves request names)."""
    from mlx_lama.registry import UnknownModelError, load_registry
    from mlx_lama.schema.editor import find_alias_key, find_model_key

    key = find_model_key(manifest, wanted)
    if key is not None:
        return key
    registry = load_registry(
        manifest_aliases=manifest.aliases, manifest_models=list(manifest.models)
    )
    list_hint = "see the manifest's models with `mlx-lama list`"
    try:
        resolution = registry.resolve(wanted)
    except UnknownModelError as error:
        ours = (
            find_model_key(manifest, s) or find_alias_key(manifest, s) for s in error.suggestions
        )
        close = [s for s in ours if s is not None]
        guess = "; did you mean " + ", ".join(repr(s) for s in close) + "?" if close else ""
        raise MlxLamaError(
            f"model {wanted!r} is not in {manifest_path}{guess}", hint=list_hint
        ) from None
    if resolution.model is not None:
        return resolution.model
    users = sorted(n for n, e in manifest.models.items() if e.repo == resolution.repo)
    if users:
        return users[0]
    raise MlxLamaError(
        f"model {wanted!r} ({resolution.repo}) is not in {manifest_path}",
        hint=f"add it with `mlx-lama pull {wanted}`, or {list_hint}",
    )


@dataclass(frozen=True, slots=True)
class _Shown:
    """One model as ``show`` reports it: its entry, files and place in the manifest."""

    manifest: Manifest
    name: str
    manifest_path: Path
    folder: Path | None  # where its files are; None when not on disk (or external)
    local: Path | None  # a path model's folder, resolved
    commit: str | None  # the locked commit, when the lock matches the manifest
    facts: ModelFacts
    memory: tuple[Estimate, int] | None = None  # its server's estimate and the budget

    @classmethod
    def of(cls, manifest: Manifest, name: str, manifest_path: Path) -> _Shown:
        from mlx_lama import paths
        from mlx_lama.orchestrator.desired import model_spec
        from mlx_lama.orchestrator.facts import model_folder, read_facts
        from mlx_lama.schema.lockfile import lock_path_for, read_lock

        entry = manifest.models[name]
        folder: Path | None = None
        local: Path | None = None
        commit: str | None = None
        locked = None
        if not manifest.is_external(name):
            lock = read_lock(lock_path_for(manifest_path))
            spec = model_spec(name, entry, lock, manifest_path.absolute().parent)
            local, commit = spec.path, spec.commit
            locked = lock.get(name) if commit is not None else None
            folder = model_folder(spec, paths.hf_hub_cache())
            if folder is not None and not folder.is_dir():
                folder = None
        facts = read_facts(folder, locked)
        memory = None
        if folder is not None and manifest.serve_mode(name) != "never":
            memory = _memory(manifest, spec, manifest_path)
        return cls(manifest, name, manifest_path, folder, local, commit, facts, memory)

    @property
    def entry(self) -> ModelEntry:
        return self.manifest.models[self.name]

    def portable_entry(self) -> ModelEntry:
        """The entry with its folders (model, adapter) absolute, so its Modelfile works
        from any folder (``create`` stores them relative to the manifest again).
        ``~`` forms stay as written: they mean the same everywhere."""
        from mlx_lama.orchestrator.desired import local_path

        home = self.manifest_path.absolute().parent

        def absolute(text: str | None) -> str | None:
            return text if not text or text.startswith("~") else str(local_path(text, home))

        return replace(
            self.entry, path=absolute(self.entry.path), adapter=absolute(self.entry.adapter)
        )

    def keep_alive(self) -> str:
        return str(self.manifest.keep_alive_of(self.name))

    def aliases(self) -> list[str]:
        """The manifest's aliases that lead to this model, directly or through others."""
        from mlx_lama.registry import load_registry

        registry = load_registry(
            manifest_aliases=self.manifest.aliases, manifest_models=list(self.manifest.models)
        )
        found = []
        for alias in self.manifest.aliases:
            try:
                if registry.resolve(alias).model == self.name:
                    found.append(alias)
            except MlxLamaError:
                continue
        return sorted(found)

    def engine(self) -> Capabilities:
        """What the engine that serves this model can do."""
        from mlx_lama.backends.base import get_backend

        m = self.manifest
        return get_backend(m.backend_type(m.backend_of(self.name))).capabilities()

    # -- the default view

    def render(self) -> str:
        """The sections ``ollama show`` prints, then the manifest's own."""
        from mlx_lama.gateway.models import capabilities, details, takes_images
        from mlx_lama.schema.modelfile_render import parameter_lines

        entry = self.entry
        out: list[str] = []
        if self.folder is not None:
            info = details(self.facts.config)
            rows = [
                ("architecture", str(info["family"])),
                ("parameters", str(info["parameter_size"] or "unknown")),
                ("context length", str(info.get("context_length", "unknown"))),
                ("embedding length", str(info.get("embedding_length", "unknown"))),
                ("quantization", str(info["quantization_level"])),
            ]
            out += _section("Model", _rows(rows))
            kinds = capabilities(
                self.facts,
                embeddings=entry.kind == "embedding",
                vision=takes_images(self.facts.config, self.engine().vision),
            )
            out += _section("Capabilities", [f"    {c}" for c in kinds])
        else:
            out += _section("Model", [f"    {self._missing()}"])
        lines = parameter_lines(entry)
        if lines:
            out += _section("Parameters", _rows([tuple(line.split(" ", 1)) for line in lines]))
        if entry.system:
            out += _section("System", _preview(entry.system))
        if entry.license:
            out += _section("License", _preview("\n".join(entry.license)))
        out += _section("Manifest", _rows(self._manifest_rows()))
        return "\n".join(out)

    def _missing(self) -> str:
        entry = self.entry
        if self.manifest.is_external(self.name):
            return f"served by an external server at {entry.url}; mlx-lama holds no files"
        if self.local is not None:
            return f"no model folder at {self.local}"
        return (
            f"not downloaded: run `mlx-lama pull {self.name}` or `mlx-lama apply` "
            f"to fetch {entry.repo}"
        )

    def _manifest_rows(self) -> list[tuple[str, str]]:
        from mlx_lama.humanize import size_str
        from mlx_lama.orchestrator.desired import DEFAULT_REVISION

        entry, m = self.entry, self.manifest
        rows: list[tuple[str, str]] = []
        if entry.repo is not None:
            rows.append(("repo", entry.repo))
            rows.append(("revision", entry.revision or DEFAULT_REVISION))
            rows.append(("commit", self.commit or "not locked yet (run `mlx-lama lock`)"))
        elif entry.path is not None:
            where = f" ({self.local})" if self.local and str(self.local) != entry.path else ""
            rows.append(("path", entry.path + where))
        elif entry.url is not None:
            rows.append(("url", entry.url))
        if self.folder is not None:
            rows.append(("size", size_str(self.facts.size)))
        if self.memory is not None:
            estimate, budget = self.memory
            fits = "fits" if estimate.total <= budget else "more than it: it cannot start"
            rows.append(
                (
                    "memory",
                    f"about {size_str(estimate.total)} served (weights "
                    f"{size_str(estimate.weights)}, KV caches up to "
                    f"{size_str(estimate.kv_cache)}); memory_budget {size_str(budget)}: {fits}",
                )
            )
        backend = m.backend_of(self.name)
        engine = m.backend_type(backend)
        rows.append(("backend", backend if backend == engine else f"{backend} ({engine})"))
        if not m.is_external(self.name):
            rows.append(("serve", m.serve_mode(self.name)))
            if m.serve_mode(self.name) != "never":
                rows.append(("port", str(entry.port) if entry.port else "assigned when started"))
            rows.append(("keep_alive", self.keep_alive() + (", pinned" if entry.pin else "")))
        if entry.is_distributed:
            rows.append(("hosts", ", ".join(entry.hosts) or f"from {entry.hostfile}"))
            how = "pipeline" if entry.pipeline else "tensor"
            rows.append(("distributed", f"{entry.distributed or 'ring'}, {how} parallel"))
        if entry.adapter:
            rows.append(("adapter", entry.adapter))
        aliases = self.aliases()
        if aliases:
            rows.append(("aliases", ", ".join(aliases)))
        rows.append(("file", str(self.manifest_path)))
        return rows

    def manifest_json(self) -> JsonObject:
        entry, m = self.entry, self.manifest
        return {
            "name": self.name,
            "file": str(self.manifest_path),
            "repo": entry.repo,
            "path": entry.path,
            "url": entry.url,
            "revision": entry.revision,
            "commit": self.commit,
            "downloaded": self.folder is not None,
            "size": self.facts.size if self.folder is not None else None,
            "backend": m.backend_of(self.name),
            "serve": None if m.is_external(self.name) else m.serve_mode(self.name),
            "port": entry.port,
            "keep_alive": self.keep_alive(),
            "pin": entry.pin,
            "aliases": self.aliases(),
            "hosts": entry.hosts,
            "hostfile": entry.hostfile,
            "distributed": (entry.distributed or "ring") if entry.is_distributed else None,
            "pipeline": entry.pipeline,
            "memory": None
            if self.memory is None
            else {
                "estimate": self.memory[0].total,
                "weights": self.memory[0].weights,
                "kv_cache": self.memory[0].kv_cache,
                "budget": self.memory[1],
            },
        }


def _memory(manifest: Manifest, spec: ModelSpec, manifest_path: Path) -> tuple[Estimate, int]:
    """What the model's server would hold here, and the memory budget it must fit."""
    from mlx_lama import machine, paths
    from mlx_lama.orchestrator.desired import server_spec
    from mlx_lama.orchestrator.memory import budget_bytes, server_estimate

    server = server_spec(
        manifest, spec, manifest_dir=manifest_path.absolute().parent, cache_dir=paths.hf_hub_cache()
    )
    budget = budget_bytes(
        manifest.server.memory_budget, machine.total_memory(), machine.gpu_wired_limit()
    )
    return server_estimate(server), budget


def _section(title: str, lines: Sequence[str]) -> list[str]:
    return [f"  {title}", *lines, ""]


def _rows(rows: Sequence[tuple[str, ...]]) -> list[str]:
    """Key/value lines with the values in one column, as ``ollama show`` aligns them."""
    width = max(len(row[0]) for row in rows)
    return [f"    {row[0].ljust(width)}    {' '.join(row[1:])}".rstrip() for row in rows]


def _preview(text: str) -> list[str]:
    lines = text.strip("\n").splitlines()
    shown = [f"    {line}".rstrip() for line in lines[:_PREVIEW_LINES]]
    return shown + (["    ..."] if len(lines) > _PREVIEW_LINES else [])
