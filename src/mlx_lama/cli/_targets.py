"""The two kinds of :class:`~mlx_lama.cli._answer.Target` that ``mlx-lama run`` talks to.

- :class:`LocalTarget`: a model loaded in this process through the backend's
  in-process API (:meth:`~mlx_lama.backends.base.Backend.load_session`), with
  the manifest's system prompt, messages, parameters, adapter and template;
- :class:`DaemonTarget`: a model the running daemon serves (or a ``[remotes]``
  gateway, through it), reached through its Ollama ``/api/chat``.

``cli/run.py`` decides which one a name gets.
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlx_lama.cli._answer import Event, Message, Settings, Stats
from mlx_lama.errors import MlxLamaError

if TYPE_CHECKING:
    from mlx_lama.backends.base import Backend
    from mlx_lama.backends.generation import InProcessModel
    from mlx_lama.backends.spec import ParameterValue
    from mlx_lama.cli._workspace import Workspace
    from mlx_lama.cli.daemonclient import Daemon
    from mlx_lama.schema.manifest import ModelEntry


class RunError(MlxLamaError):
    """The model could not answer: the daemon or the engine reported an error."""


class ModelNotFoundError(MlxLamaError):
    """The model is not in the manifest or not on disk, and was not pulled."""


# -- answering in this process -------------------------------------------------------------


def local_target(workspace: Workspace, key: str) -> LocalTarget:
    """The in-process target of ``key``; raises for external models and engines
    that are not installed here."""
    from mlx_lama.backends.base import BackendMissingError, get_backend
    from mlx_lama.orchestrator.desired import server_spec

    manifest = workspace.manifest
    entry = manifest.models[key]
    if manifest.is_external(key):
        raise RunError(
            f"model '{key}' is served by an external server ({entry.url}), "
            "which run reaches only through the daemon",
            hint="start `mlx-lama serve` and run the command again",
        )
    if entry.is_distributed:
        raise RunError(
            f"model '{key}' is served across several hosts, "
            "which run reaches only through the daemon",
            hint="start `mlx-lama serve` and run the command again",
        )
    spec = next(m for m in workspace.desired().models if m.name == key)
    server = server_spec(
        manifest, spec, manifest_dir=workspace.manifest_path.parent, cache_dir=workspace.cache_dir
    )
    backend = get_backend(server.engine)
    if not backend.package_present():
        if backend.environment_python() is not None:
            raise RunError(
                f"model '{key}' runs on {server.engine}, which lives in an environment of "
                "its own: run reaches it only through the daemon",
                hint="start `mlx-lama serve` and run the command again",
            )
        raise BackendMissingError(server.engine, [key])
    if server.model_path is None:  # needs_pull said no, so the lock has it: not expected
        raise ModelNotFoundError(
            f"model '{key}' is not downloaded", hint=f"run `mlx-lama pull {key}`"
        )
    return LocalTarget(
        key,
        entry,
        manifest.parameters_of(key),
        backend=backend,
        folder=server.model_path,
        adapter=server.adapter,
        template=server.template,
    )


class LocalTarget:
    """A model loaded in this process (once, on the first :meth:`load`)."""

    in_process = True
    where = "in this process (no daemon)"

    def __init__(
        self,
        name: str,
        entry: ModelEntry,
        parameters: Mapping[str, object],
        *,
        backend: Backend,
        folder: Path,
        adapter: Path | None,
        template: str | None,
    ) -> None:
        self.name, self.entry, self.parameters = name, entry, parameters
        self.folder: Path | None = folder
        self._backend, self._adapter, self._template = backend, adapter, template
        self._session: InProcessModel | None = None

    def load(self, keep_alive: str | None = None) -> None:
        if self._session is None:
            self._session = self._backend.load_session(
                self.folder or Path(), self._adapter, template=self._template
            )

    def reply(
        self, messages: Sequence[Message], settings: Settings
    ) -> Generator[Event, None, None]:
        started = time.perf_counter()
        loading = self._session is None
        self.load()
        assert self._session is not None
        load_seconds = self._session.load_seconds if loading else 0.0
        parameters = engine_parameters({**self.parameters, **settings.options})
        chunks = self._session.generate(
            messages=with_manifest_messages(self.entry, messages), parameters=parameters
        )
        for chunk in chunks:
            if chunk.text:
                yield chunk.text
            if chunk.stats is not None:
                s = chunk.stats
                yield Stats(
                    total_duration=_ns(time.perf_counter() - started),
                    load_duration=_ns(load_seconds),
                    prompt_eval_count=s.prompt_tokens,
                    prompt_eval_duration=_ns(_seconds(s.prompt_tokens, s.prompt_tokens_per_second)),
                    eval_count=s.generated_tokens,
                    eval_duration=_ns(_seconds(s.generated_tokens, s.tokens_per_second)),
                )

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


def with_manifest_messages(entry: ModelEntry, messages: Sequence[Message]) -> list[Message]:
    """The conversation with the entry's system prompt (unless it brings one) and
    seeded MESSAGEs, placed exactly as the gateway places them."""
    from mlx_lama.gateway.ollama import ModelDefaults, chat_request

    defaults = ModelDefaults(
        system=entry.system,
        messages=tuple({"role": m.role, "content": m.content} for m in entry.messages),
    )
    body = chat_request({"messages": list(messages)}, defaults, None)
    return [{"role": m["role"], "content": m["content"]} for m in body["messages"]]


def engine_parameters(values: Mapping[str, object]) -> dict[str, ParameterValue]:
    """Manifest parameters as the backend takes them (lists as tuples). Pure."""
    result: dict[str, ParameterValue] = {}
    for name, value in values.items():
        if isinstance(value, list | tuple):
            result[name] = tuple(str(v) for v in value)
        elif isinstance(value, str | int | float):
            result[name] = value
    return result


def _seconds(tokens: int, per_second: float) -> float:
    return tokens / per_second if per_second > 0 else 0.0


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


# -- answering through the daemon ------------------------------------------------------------


class DaemonTarget:
    """A model the daemon serves, reached through its Ollama ``/api/chat``."""

    in_process = False

    def __init__(
        self,
        daemon: Daemon,
        name: str,
        entry: ModelEntry,
        parameters: Mapping[str, object],
        folder: Path | None,
        where: str = "",
    ) -> None:
        self.name, self.entry, self.parameters, self.folder = name, entry, parameters, folder
        self.where = where or f"the daemon at {daemon.url} (pid {daemon.pid})"
        self._daemon = daemon

    @classmethod
    def of_manifest(cls, daemon: Daemon, workspace: Workspace, key: str) -> DaemonTarget:
        """Manifest model ``key``, which this daemon serves."""
        manifest = workspace.manifest
        return cls(
            daemon,
            key,
            manifest.models[key],
            manifest.parameters_of(key),
            _model_folder(workspace, key),
        )

    def load(self, keep_alive: str | None = None) -> None:
        """An empty chat: the daemon loads the model and answers once it is ready."""
        body: dict[str, Any] = {"model": self.name, "messages": [], "stream": False}
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        chunks = self._chat(body)
        try:
            for _ in chunks:
                pass
        finally:
            chunks.close()

    def reply(
        self, messages: Sequence[Message], settings: Settings
    ) -> Generator[Event, None, None]:
        body: dict[str, Any] = {"model": self.name, "messages": list(messages), "stream": True}
        if settings.options:
            body["options"] = dict(settings.options)
        if settings.format:
            body["format"] = settings.format
        if settings.keep_alive is not None:
            body["keep_alive"] = settings.keep_alive
        return self._chat(body)

    def _chat(self, body: dict[str, Any]) -> Generator[Event, None, None]:
        from mlx_lama.cli.daemonclient import Reply

        # No read timeout: a cold model may take minutes to load before its first token.
        # A lost connection raises DaemonError, which names the daemon and the fix.
        with self._daemon.stream("POST", "/api/chat", body, timeout=None) as response:
            if response.status != 200:
                raise RunError(Reply(response.status, response.read()).error_text())
            for raw in response:
                line = raw.decode(errors="replace").strip()
                if not line:
                    continue
                chunk = _parse_chunk(line)
                if "error" in chunk:
                    raise RunError(str(chunk["error"]))
                message = chunk.get("message")
                content = message.get("content") if isinstance(message, dict) else None
                if isinstance(content, str) and content:
                    yield content
                if chunk.get("done"):
                    yield Stats.from_chunk(chunk)
                    return
        raise RunError("the daemon ended the answer without its final line")

    def embed(self, text: str, keep_alive: str | None = None) -> list[float]:
        """The embedding of ``text`` (an embedding model), through ``/api/embed``."""
        body: dict[str, Any] = {"model": self.name, "input": text}
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        reply = self._daemon.request("POST", "/api/embed", body, timeout=None)
        if reply.status != 200:
            raise RunError(reply.error_text())
        vectors = reply.json().get("embeddings")
        if not isinstance(vectors, list) or len(vectors) != 1:
            raise RunError("the daemon answered /api/embed without one embedding")
        return list(vectors[0])

    def close(self) -> None:
        """Nothing to let go of: each request has its own connection."""


def remote_target(daemon: Daemon, name: str) -> DaemonTarget | None:
    """Model ``name`` on a ``[remotes]`` gateway, reached through the daemon, when the
    daemon finds it there (its ``/api/show`` answers for a name the manifest lacks)."""
    from mlx_lama.schema.manifest import ModelEntry

    reply = daemon.request("POST", "/api/show", {"model": name}, timeout=30.0)
    if reply.status != 200:
        return None
    where = f"a remote gateway, through the daemon at {daemon.url} (pid {daemon.pid})"
    return DaemonTarget(daemon, name, ModelEntry(), {}, None, where)


def _model_folder(workspace: Workspace, key: str) -> Path | None:
    from mlx_lama.orchestrator.desired import server_spec

    spec = next((m for m in workspace.desired().models if m.name == key), None)
    if spec is None:  # external
        return None
    return server_spec(
        workspace.manifest,
        spec,
        manifest_dir=workspace.manifest_path.parent,
        cache_dir=workspace.cache_dir,
    ).model_path


def _parse_chunk(line: str) -> dict[str, Any]:
    try:
        chunk = json.loads(line)
    except ValueError:
        raise RunError(f"the daemon sent a line that is not JSON: {line[:200]!r}") from None
    if not isinstance(chunk, dict):
        raise RunError(f"the daemon sent an unexpected line: {line[:200]!r}")
    return chunk
