"""The gateway's view of the manifest: which names route where, and what each model is.

``Gateway`` holds the loaded manifest and lock, the desired state built from
them, the alias registry and the :class:`Scheduler`. The routes ask it to
resolve a request's model name (alias, manifest name, ``name:latest``, repo
id) to a :class:`Route`, and for the facts ``/api/tags`` and ``/api/show``
report; its :class:`RemoteSet` knows the models of the manifest's ``[remotes]``.
:meth:`Gateway.reload` takes a changed manifest (after the gateway's own
edits, and from the watcher later). It never edits the manifest itself and
never starts processes directly: that is the scheduler's job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from mlx_lama.gateway import requestlog
from mlx_lama.gateway.activity import Activity
from mlx_lama.gateway.metrics import Metrics
from mlx_lama.gateway.models import takes_images
from mlx_lama.gateway.ollama import ModelDefaults
from mlx_lama.gateway.remotes import RemoteSet
from mlx_lama.gateway.spares import Spares
from mlx_lama.gateway.validate import Limits
from mlx_lama.names import check_model_name
from mlx_lama.orchestrator.desired import desired
from mlx_lama.orchestrator.facts import (
    ModelFacts,
    added_tokens,
    chat_template,
    model_folder,
    read_config,
    read_facts,
)
from mlx_lama.orchestrator.memory import budget_bytes
from mlx_lama.orchestrator.projects import project_key
from mlx_lama.orchestrator.scheduler import Scheduler
from mlx_lama.orchestrator.slots import Changes, SchedulerConfig
from mlx_lama.orchestrator.state import DesiredState, ServerSpec, snapshot_folder
from mlx_lama.registry import InvalidModelNameError, Registry, load_registry
from mlx_lama.schema.editor import find_alias_key, find_model_key
from mlx_lama.schema.lockfile import Lock, lock_path_for, read_lock
from mlx_lama.schema.manifest import Manifest, ModelEntry
from mlx_lama.units import Size

if TYPE_CHECKING:
    import httpx

    from mlx_lama.backends.base import Capabilities

log = logging.getLogger(__name__)

RouteKind = Literal["server", "external", "never"]
# Names remembered by Gateway.resolve; past this, new names are resolved every time
# (a client must not make the gateway keep every spelling it can think of).
MAX_RESOLVED = 256


class UnknownModel(LookupError):
    """The name is not a model (or alias) of the manifest; ``str()`` is the client message."""


class InvalidName(ValueError):
    """The name breaks the naming rules; ``str()`` is the client message."""


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request for a manifest model goes."""

    name: str  # the manifest's model name
    entry: ModelEntry
    kind: RouteKind
    defaults: ModelDefaults  # SYSTEM, MESSAGE and PARAMETER applied under each request
    url: str | None = None  # external models: the server's root


class Gateway:
    """Shared state of one running gateway."""

    def __init__(
        self,
        manifest_path: Path,
        manifest: Manifest,
        lock: Lock,
        *,
        cache_dir: Path,
        scheduler: Scheduler,
        total_memory: int,
        wired_limit: int | None = None,  # what a Mac's GPU may wire (machine.py)
        ready_timeout: float | None = None,
    ) -> None:
        self.manifest_path = manifest_path
        self.project = project_key(manifest_path)  # the project this gateway serves
        self.cache_dir = cache_dir
        self.scheduler = scheduler
        self.total_memory = total_memory
        self.wired_limit = wired_limit
        self.ready_timeout = ready_timeout
        self.metrics = Metrics()  # for /metrics
        self.activity = Activity()  # for /mlx-lama/stats (mlx-lama top)
        scheduler.on_load = self._loaded
        self.client: httpx.AsyncClient | None = None  # made and closed by the app's lifespan
        self.spares = Spares()  # connections ready for token streams; the lifespan closes them
        self.remotes = RemoteSet()  # [remotes]: the other gateways' models (see forward.py)
        # Called with (old, new) manifest after each reload, e.g. to renew the security policy.
        self.on_reload: list[Callable[[Manifest, Manifest], None]] = []
        # Set by _apply from the manifest, now and on every reload:
        self.manifest: Manifest
        self.lock: Lock
        self.desired: DesiredState
        self.registry: Registry
        self._servers: dict[str, ServerSpec]
        self._resolved: dict[str, Route]  # resolve's answers for this manifest
        self._limits: dict[str, Limits] = {}  # limits' answers for this manifest
        self.not_downloaded: frozenset[str]  # models whose files are not all in the cache
        self._apply(manifest, lock)

    # -- what happened: /metrics and /mlx-lama/stats

    def finished(
        self,
        model: str,
        endpoint: str,
        status: int,
        seconds: float,
        *,
        tokens: tuple[int, int] | None = None,
        first_token: float | None = None,
        method: str | None = None,
    ) -> None:
        """Count one finished request of ``model`` (a manifest name, or ``""``) on
        ``endpoint`` (a route template): ``tokens`` are (prompt, completion) when the
        backend reported them, ``first_token`` the seconds until the first one.
        ``method``: the HTTP method, when not that of the request being answered
        (``requestlog.current``), which this counts as counted."""
        entry = requestlog.current()
        if entry is not None:
            entry.counted = True
            method = method or entry.method
        self.metrics.request(model, endpoint, status, seconds)
        log.info(  # the request log: one line per request (see requestlog.py)
            "%s %s %s %d %.3fs%s",
            method or "POST",
            endpoint,
            model or "-",
            status,
            seconds,
            "" if tokens is None else f" tokens {tokens[0]}+{tokens[1]}",
        )
        if tokens is not None:
            self.metrics.tokens(model, *tokens)
        if first_token is not None:
            self.metrics.first_token(model, first_token)
        prompt, completion = tokens or (0, 0)
        self.activity.request(
            model,
            endpoint,
            status,
            seconds,
            prompt_tokens=prompt,
            completion_tokens=completion,
            first_token=first_token,
            method=method or "POST",
        )

    def _loaded(self, model: str, seconds: float, ok: bool) -> None:
        self.metrics.load(model, seconds, ok)
        self.activity.load(model, seconds, ok)

    # -- manifest

    def _apply(self, manifest: Manifest, lock: Lock) -> Changes:
        self.manifest = manifest
        self.lock = lock
        self.desired = desired(
            manifest,
            lock,
            manifest_dir=self.manifest_path.parent,
            cache_dir=self.cache_dir,
            project=self.project,
        )
        self.registry = load_registry(
            manifest_aliases=manifest.aliases, manifest_models=list(manifest.models)
        )
        self._servers = {s.name: s for s in self.desired.servers}
        self._resolved = {}
        self._limits = {}
        self.remotes.configure(manifest.remotes)
        self.not_downloaded = self._not_downloaded()
        server = manifest.server
        config = SchedulerConfig(
            max_loaded=server.max_loaded,
            memory_budget=self.memory_budget(server.memory_budget),
            max_queue=self.scheduler.config.max_queue,
            ready_timeout=self.ready_timeout,
            manifest=str(self.manifest_path),
            wedge_timeout=server.wedge_timeout.seconds,
        )
        return self.scheduler.configure(
            self.desired.servers,
            {s.name: manifest.keep_alive_of(s.name) for s in self.desired.servers},
            [name for name, entry in manifest.models.items() if entry.pin],
            config,
            missing=self.not_downloaded,
        )

    def _not_downloaded(self) -> frozenset[str]:
        """Models whose files are not all in the cache (being pulled, or failed to)."""
        from mlx_lama.orchestrator.pull import file_problems

        missing = set()
        for model in self.desired.models:
            if model.repo is None:
                continue
            if model.commit is None:
                missing.add(model.name)
                continue
            snapshot = snapshot_folder(self.cache_dir, model.repo, model.commit)
            if file_problems(snapshot, model.files):
                missing.add(model.name)
        return frozenset(missing)

    async def reload(
        self, manifest: Manifest | None = None, lock: Lock | None = None, *, wait: bool = True
    ) -> Changes:
        """Take the manifest on disk (or ``manifest``, already loaded) and its lock.

        Routing changes (aliases, remotes, keep_alive, pin, system prompt and
        sampling defaults) are live when this returns. Servers gone from the manifest
        stop once their requests end, and servers whose launch spec changed are
        restarted from the new spec; with ``wait`` this returns after that,
        otherwise it happens in the background. Raises the loader's errors for a
        manifest that does not validate (nothing is changed then).
        """
        from mlx_lama.schema import load_manifest

        fresh = manifest if manifest is not None else load_manifest(self.manifest_path)
        if lock is None:
            lock = read_lock(lock_path_for(self.manifest_path))
        previous = self.manifest
        changes = self._apply(fresh, lock)
        for listener in self.on_reload:
            listener(previous, fresh)
        tasks = self.scheduler.apply_changes(changes)
        if wait:
            for task in tasks:
                await task
        return changes

    # -- names

    def resolve(self, name: object) -> Route:
        """The route for a request's model name. Raises InvalidName or UnknownModel.

        Remembered per name until the next reload: it is on every request's path
        before the backend sees it, and the same few names come again and again.
        """
        if isinstance(name, str):
            known = self._resolved.get(name)
            if known is not None:
                return known
        route = self._resolve(name)
        if len(self._resolved) < MAX_RESOLVED:
            self._resolved[str(name)] = route
        return route

    def _resolve(self, name: object) -> Route:
        if not isinstance(name, str) or not name:
            raise InvalidName("model is required")
        problem = check_model_name(name)
        if problem is not None:
            raise InvalidName(problem)
        try:
            resolution = self.registry.resolve(name)
        except InvalidModelNameError as error:
            raise InvalidName(str(error)) from None
        except Exception:  # an unknown name, or an alias loop: not a model we serve
            raise UnknownModel(_not_found(name)) from None
        target = resolution.model
        if target is None:  # a repo id or a built-in alias: a manifest model may use that repo
            target = self._model_for_repo(resolution.target)
        if target is None:
            raise UnknownModel(_not_found(name))
        return self.route(target)

    def route(self, target: str) -> Route:
        entry = self.manifest.models[target]
        defaults = ModelDefaults(
            system=entry.system,
            messages=tuple({"role": m.role, "content": m.content} for m in entry.messages),
            parameters=self.manifest.parameters_of(target),
        )
        if self.manifest.is_external(target):
            return Route(target, entry, "external", defaults, url=entry.url)
        kind: RouteKind = "server" if target in self._servers else "never"
        return Route(target, entry, kind, defaults)

    def _model_for_repo(self, repo: str) -> str | None:
        matches = sorted(n for n, e in self.manifest.models.items() if e.repo == repo)
        return matches[0] if matches else None

    def model_key(self, name: str) -> str | None:
        """The manifest's own key for ``name`` (Ollama matching), or None."""
        return find_model_key(self.manifest, name)

    def alias_key(self, name: str) -> str | None:
        return find_alias_key(self.manifest, name)

    def alias_target(self, alias: str) -> str | None:
        """The manifest model an alias ends at (following chains), or None."""
        try:
            return self.registry.resolve(alias).model
        except Exception:
            return None

    # -- facts about models

    def model_folder(self, name: str) -> Path | None:
        spec = next((m for m in self.desired.models if m.name == name), None)
        return None if spec is None else model_folder(spec, self.cache_dir)

    def facts(self, name: str) -> ModelFacts:
        """Size, time and config of ``name``'s files (empty ones when not on disk)."""
        return read_facts(self.model_folder(name), self.lock.get(name))

    def chat_template(self, route: Route) -> str | None:
        """The chat template the engine of ``route`` applies: the manifest's
        ``template``, else the model's own ("" without one); None when mlx-lama runs
        no engine for it (an external server's template is not known here)."""
        spec = self._servers.get(route.name)
        if spec is None:
            return None
        if spec.template is not None:
            return spec.template
        return chat_template(self.model_folder(route.name))

    def memory_budget(self, budget: Size) -> int:
        """``[server] memory_budget`` in bytes on this machine (``memory.budget_bytes``)."""
        return budget_bytes(budget, self.total_memory, self.wired_limit)

    def added_tokens(self, route: Route) -> frozenset[str] | None:
        """The added tokens of the model behind ``route`` (``facts.added_tokens``); None
        when mlx-lama runs no engine for it (an external server's are not known)."""
        if route.name not in self._servers:
            return None
        return added_tokens(self.model_folder(route.name))

    def can(self, route: Route, capability: str) -> bool:
        """Whether the engine behind ``route`` has ``capability`` (a field of
        :class:`Capabilities`); an external server is trusted with everything."""
        if route.kind == "external":
            return True
        capabilities = self._capabilities(route.name)
        return capabilities is not None and bool(getattr(capabilities, capability))

    def engine_of(self, route: Route) -> str | None:
        """The engine mlx-lama runs for ``route`` (None: an external or unserved model)."""
        spec = self._servers.get(route.name)
        return None if spec is None else spec.engine

    def _capabilities(self, name: str) -> Capabilities | None:
        """What the engine serving ``name`` can do (None: mlx-lama runs no server for it)."""
        spec = self._servers.get(name)
        if spec is None:
            return None
        from mlx_lama.backends.base import get_backend

        return get_backend(spec.engine).capabilities()

    def limits(self, route: Route) -> Limits:
        """What requests to ``route``'s model may ask of it (see ``validate.py``):
        images only where the model has a vision tower and its engine takes
        images; at most its context length of tokens. An external server's
        model is not known here: it decides for itself."""
        if route.kind == "external":
            return Limits(vision=True, fetches_images=True, embeds=True)
        known = self._limits.get(route.name)
        if known is not None:
            return known
        config = read_config(self.model_folder(route.name))
        context = config.get("max_position_embeddings")
        capabilities = self._capabilities(route.name)
        engine_vision = capabilities is not None and capabilities.vision
        if "vision_config" not in config:
            hint = "use a vision model (its config.json has a vision_config)"
        else:
            hint = f'serve {route.name!r} with backend = "vllm-mlx", which takes images'
        known = Limits(
            vision=takes_images(config, engine_vision),
            context=context if isinstance(context, int) and context > 0 else None,
            vision_hint=hint,
            generates=capabilities is None or capabilities.chat,
            embeds=capabilities is not None and capabilities.embeddings,
        )
        self._limits[route.name] = known
        return known

    def server_spec(self, name: str) -> ServerSpec | None:
        return self._servers.get(name)


def _not_found(name: str) -> str:
    return f"model '{name}' not found"
