"""``mlx-lama run MODEL [PROMPT]``: talk to a model, like ``ollama run``.

MODEL is resolved against the manifest as the gateway resolves it (a model,
an alias, ``name:latest``, or a repo id a model uses); a model missing from
the manifest or the cache is pulled first (``cli/pull.py``), after asking on
a terminal. Where it answers:

- when ``mlx-lama serve`` runs for this manifest, through the daemon's Ollama
  ``/api/chat`` (the model stays loaded there for the next command; a
  ``serve = "never"`` model is switched to ``"on-demand"`` first, with a note);
- otherwise in this process, through the backend's in-process API
  (:meth:`~mlx_lama.backends.base.Backend.load_session`), loaded once per chat,
  with the manifest's system prompt, messages, parameters, adapter and template.

A PROMPT (or piped stdin) gets one answer on stdout; a terminal gets the
interactive chat of ``cli/_chat.py``. Whether files are present is decided by
the planner (a PULL action), never guessed here.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Generator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mlx_lama.cli._app import app
from mlx_lama.cli._common import ManifestFile, handles_errors
from mlx_lama.errors import MlxLamaError, UsageError

if TYPE_CHECKING:
    from mlx_lama.backends.base import Backend, InProcessModel, ParameterValue
    from mlx_lama.cli._chat import Event, Message, Settings, Target
    from mlx_lama.cli._workspace import Workspace
    from mlx_lama.daemonclient import Daemon
    from mlx_lama.schema.manifest import Manifest, ModelEntry

FORMATS = ("json",)


class RunError(MlxLamaError):
    """The model could not answer: the daemon or the engine reported an error."""


class ModelNotFoundError(MlxLamaError):
    """The model is not in the manifest or not on disk, and was not pulled."""


@app.command()
@handles_errors
def run(
    model: Annotated[
        str,
        typer.Argument(
            help="Model: a manifest name or alias, or a repo id.",
            metavar="MODEL",
            show_default=False,
        ),
    ],
    prompt: Annotated[
        list[str] | None,
        typer.Argument(
            help="Prompt (words are joined); none: read stdin, or chat on a terminal.",
            metavar="[PROMPT]...",
        ),
    ] = None,
    file: ManifestFile = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Show timings and token rates after each answer.")
    ] = False,
    output_format: Annotated[
        str | None,
        typer.Option("--format", help='Response format: "json" (enforced by the daemon only).'),
    ] = None,
    keepalive: Annotated[
        str | None,
        typer.Option(
            "--keepalive",
            help="How long the daemon keeps the model loaded afterwards (5m, 1h30m; -1m: forever).",
        ),
    ] = None,
    nowordwrap: Annotated[
        bool,
        typer.Option("--nowordwrap", help="Accepted for Ollama's sake; output is not wrapped."),
    ] = False,
) -> None:
    """Run a model: answer PROMPT, or chat when there is none.

    With a daemon (`mlx-lama serve`) for this manifest, the request goes there
    and the model stays loaded; otherwise the model is loaded in this process.
    A model that is not in the manifest or not downloaded is pulled first.
    In the chat, /? lists the commands; Ctrl-C stops an answer, Ctrl-D exits.
    """
    from mlx_lama.cli._chat import Chat, Settings, format_warning, respond
    from mlx_lama.schema import find_manifest

    settings = Settings(
        format=check_format(output_format), keep_alive=check_keepalive(keepalive), verbose=verbose
    )
    stdin_tty = sys.stdin.isatty()
    text = prompt_text(prompt or [], None if stdin_tty else sys.stdin.read())
    opener = Opener(find_manifest(file).path, ask=stdin_tty)
    target = opener.open(model)
    try:
        for warning in (format_warning(target, settings), keepalive_warning(target, settings)):
            if warning:
                typer.echo(f"warning: {warning}", err=True)
        if text is None:
            Chat(target, settings, opener.open).run()
        elif not text.strip():
            target.load(settings.keep_alive)  # Ollama's empty prompt: load the model, quietly
        else:
            respond(target, [{"role": "user", "content": text}], settings, end="\n")
    finally:
        target.close()


# -- the command line ------------------------------------------------------------------


def prompt_text(words: Sequence[str], stdin: str | None) -> str | None:
    """The prompt: the words joined by spaces, with piped stdin appended after a
    blank line (as Ollama does); None when there is neither (a chat). Pure."""
    text = " ".join(words)
    if stdin is None:
        return text or None
    if text and stdin:
        return f"{text}\n\n{stdin}"
    return text or stdin


def check_format(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if value not in FORMATS:
        raise UsageError(f"invalid --format {value!r}", hint='the only format is "json"')
    return value


def check_keepalive(value: str | None) -> str | None:
    """``--keepalive`` as Ollama's CLI takes it: a Go duration (``5m``, ``-1m``)."""
    if value is None:
        return None
    from mlx_lama.schema.units import Duration

    try:
        Duration.parse(value)
    except ValueError:
        raise UsageError(
            f"invalid --keepalive {value!r}",
            hint="give a duration with a unit: 30s, 5m, 1h30m, or -1m to keep it loaded",
        ) from None
    return value


def keepalive_warning(target: Target, settings: Settings) -> str | None:
    if settings.keep_alive is not None and target.in_process:
        return "--keepalive has no effect in-process: the model is unloaded when run exits"
    return None


def confirm(question: str) -> bool:
    """Ask on stderr, read the answer from stdin; Enter means yes."""
    sys.stderr.write(f"{question} [Y/n] ")
    sys.stderr.flush()
    answer = sys.stdin.readline()
    if not answer:  # EOF
        sys.stderr.write("\n")
        return False
    return answer.strip().lower() in ("", "y", "yes")


# -- finding the model -------------------------------------------------------------------


class Opener:
    """Turns a model name into a :class:`Target`, pulling it first if need be."""

    def __init__(self, manifest_path: Path, *, ask: bool) -> None:
        self.path = manifest_path
        self.ask = ask

    def open(self, name: str) -> Target:
        from mlx_lama.cli._workspace import load_workspace
        from mlx_lama.daemonclient import daemon_for
        from mlx_lama.registry import UnknownModelError

        workspace = load_workspace(self.path)
        daemon = daemon_for(self.path, workspace.manifest.server.api_key)
        unknown: UnknownModelError | None = None
        try:
            key = manifest_key(workspace.manifest, name)
        except UnknownModelError as error:
            key, unknown = None, error
        if key is None and daemon is not None and workspace.manifest.remotes:
            remote = remote_target(daemon, name)
            if remote is not None:
                return remote
        if unknown is not None:
            raise unknown
        if key is None or needs_pull(workspace, key):
            key = self._pull(key or name, known=key is not None, daemon=daemon is not None)
            workspace = load_workspace(self.path)
        if daemon is None:
            return local_target(workspace, key)
        manifest = workspace.manifest
        if not manifest.is_external(key) and manifest.serve_mode(key) == "never":
            from mlx_lama.schema.editor import set_model_fields

            set_model_fields(self.path, key, {"serve": "on-demand"})
            typer.echo(
                f'note: {key} had serve = "never"; set it to "on-demand" in {self.path.name} '
                "so the daemon can serve it",
                err=True,
            )
            daemon.wait_applied()
            workspace = load_workspace(self.path)
        return DaemonTarget.of_manifest(daemon, workspace, key)

    def _pull(self, name: str, *, known: bool, daemon: bool) -> str:
        if self.ask and not confirm(f"pull {name}?"):
            where = "downloaded" if known else f"in {self.path.name}"
            raise ModelNotFoundError(
                f"model '{name}' is not {where}", hint=f"run `mlx-lama pull {name}`"
            )
        from mlx_lama.cli.pull import pull_models

        return pull_models(self.path, [name], serve="on-demand" if daemon else "never")[0]


def manifest_key(manifest: Manifest, name: str) -> str | None:
    """The manifest model ``name`` means (a model, an alias, or a repo id a model
    uses), None when it is not in the manifest. Raises for names nothing knows."""
    from mlx_lama.orchestrator.entries import pull_source

    source = pull_source(manifest, name)
    if source.existing is not None:
        return source.existing
    same_repo = sorted(key for key, entry in manifest.models.items() if entry.repo == source.repo)
    return same_repo[0] if same_repo else None


def needs_pull(workspace: Workspace, key: str) -> bool:
    """Whether ``plan`` would pull model ``key`` (not cached, not locked, incomplete).
    A ``path`` model's folder must exist; there is nothing to pull for it."""
    from mlx_lama.orchestrator.cache import scan_cache
    from mlx_lama.orchestrator.plan import ActionKind, make_plan
    from mlx_lama.orchestrator.state import DesiredState, ObservedState

    if workspace.manifest.is_external(key):
        return False
    spec = next(m for m in workspace.desired().models if m.name == key)
    if spec.repo is None:
        if spec.path is None or not spec.path.is_dir():
            raise ModelNotFoundError(
                f"model '{key}' has no folder at {spec.path}",
                hint=f'fix `path` under [models."{key}"] in {workspace.manifest_path.name}',
            )
        return False
    repos, _warnings = scan_cache(workspace.cache_dir)
    plan = make_plan(DesiredState(models=(spec,)), ObservedState(repos=repos))
    return bool(plan.of(ActionKind.PULL))


def merged_parameters(manifest: Manifest, key: str) -> dict[str, object]:
    """``[defaults]`` parameters under the entry's own, as the gateway applies them."""
    return {**manifest.defaults.parameters.as_dict(), **manifest.models[key].parameters.as_dict()}


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
        raise BackendMissingError(server.engine, [key])
    if server.model_path is None:  # needs_pull said no, so the lock has it: not expected
        raise ModelNotFoundError(
            f"model '{key}' is not downloaded", hint=f"run `mlx-lama pull {key}`"
        )
    return LocalTarget(
        key,
        entry,
        merged_parameters(manifest, key),
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
        from mlx_lama.cli._chat import Stats

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
            merged_parameters(manifest, key),
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
        from mlx_lama.cli._chat import Stats
        from mlx_lama.daemonclient import Reply

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
