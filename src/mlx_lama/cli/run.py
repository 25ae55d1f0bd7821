"""``mlx-lama run MODEL [PROMPT]``: talk to a model, like ``ollama run``.

MODEL is resolved against the manifest as the gateway resolves it (a model,
an alias, ``name:latest``, or a repo id a model uses); a model missing from
the manifest or the cache is pulled first (``cli/pull.py``), after asking on
a terminal. Where it answers:

- when ``mlx-lama serve`` runs for this manifest, through the daemon's Ollama
  ``/api/chat`` (the model stays loaded there for the next command; a
  ``serve = "never"`` model is switched to ``"on-demand"`` first, with a note);
- otherwise in this process, through the backend's in-process API, loaded
  once per chat, with the manifest's system prompt, messages, parameters,
  adapter and template.

Both kinds of target are in ``cli/_targets.py``. A PROMPT (or piped stdin)
gets one answer on stdout; a terminal gets the interactive chat of
``cli/_chat.py``. Whether files are present is decided by the planner (a PULL
action), never guessed here.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mlx_lama.cli._app import app
from mlx_lama.cli._common import ManifestFile, handles_errors
from mlx_lama.errors import UsageError

if TYPE_CHECKING:
    from mlx_lama.cli._answer import Settings, Target
    from mlx_lama.cli._workspace import Workspace
    from mlx_lama.schema.manifest import Manifest

FORMATS = ("json",)


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
        typer.Option(
            "--format",
            help='Response format: "json", through the daemon, on an engine that can '
            "constrain its output (vllm-mlx; mlx-lm refuses it).",
        ),
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
    from mlx_lama.cli._answer import Settings, format_warning, respond
    from mlx_lama.cli._chat import Chat
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
        if target.entry.kind == "embedding":
            typer.echo(json.dumps(embedding(target, model, text, settings)))
        elif text is None:
            Chat(target, settings, opener.open).run()
        elif not text.strip():
            target.load(settings.keep_alive)  # Ollama's empty prompt: load the model, quietly
        else:
            respond(target, [{"role": "user", "content": text}], settings, end="\n")
    finally:
        target.close()


def embedding(target: Target, name: str, text: str | None, settings: Settings) -> list[float]:
    """The vector of ``text`` from an embedding model, which has no chat (as ``ollama
    run`` prints it); it runs on its own engine, so only through the daemon."""
    from mlx_lama.cli._targets import DaemonTarget, RunError

    if text is None or not text.strip():
        raise RunError(
            f"'{name}' is an embedding model: it turns text into a vector and has no chat",
            hint=f"give it text to embed: mlx-lama run {name} 'some text'",
        )
    if not isinstance(target, DaemonTarget):
        raise RunError(
            f"'{name}' is an embedding model, which run reaches only through the daemon",
            hint="start `mlx-lama serve` and run the command again",
        )
    return target.embed(text, settings.keep_alive)


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
    from mlx_lama.units import Duration

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
        from mlx_lama.cli._targets import DaemonTarget, local_target, remote_target
        from mlx_lama.cli._workspace import load_workspace
        from mlx_lama.cli.daemonclient import daemon_for
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
            key = pull_missing(self.path, key or name, known=key is not None, ask=self.ask)
            workspace = load_workspace(self.path)
        if daemon is None:
            return local_target(workspace, key)
        if let_daemon_serve(self.path, workspace.manifest, key):
            daemon.wait_applied()
            workspace = load_workspace(self.path)
        return DaemonTarget.of_manifest(daemon, workspace, key)


def ensure_model(manifest_path: Path, name: str, *, ask: bool) -> str:
    """The manifest model ``name`` means, added to the manifest and pulled first when
    it is missing from the manifest or the cache (after asking, when ``ask``).
    Raises UnknownModelError for a name nothing knows, ModelNotFoundError when the
    pull is declined."""
    from mlx_lama.cli._workspace import load_workspace

    workspace = load_workspace(manifest_path)
    key = manifest_key(workspace.manifest, name)
    if key is None or needs_pull(workspace, key):
        key = pull_missing(manifest_path, key or name, known=key is not None, ask=ask)
    return key


def pull_missing(manifest_path: Path, name: str, *, known: bool, ask: bool) -> str:
    """Pull ``name`` (added on demand when new, as ``pull`` does); its manifest name."""
    from mlx_lama.cli._targets import ModelNotFoundError

    if ask and not confirm(f"pull {name}?"):
        where = "downloaded" if known else f"in {manifest_path.name}"
        raise ModelNotFoundError(
            f"model '{name}' is not {where}", hint=f"run `mlx-lama pull {name}`"
        )
    from mlx_lama.cli.pull import pull_models

    return pull_models(manifest_path, [name])[0]  # served on demand, as pull does


def let_daemon_serve(manifest_path: Path, manifest: Manifest, key: str) -> bool:
    """Switch a ``serve = "never"`` model to ``"on-demand"`` (with a note on stderr) so
    the daemon serves it; whether the manifest changed."""
    if manifest.is_external(key) or manifest.serve_mode(key) != "never":
        return False
    from mlx_lama.schema.editor import set_model_fields

    set_model_fields(manifest_path, key, {"serve": "on-demand"})
    typer.echo(
        f'note: {key} had serve = "never"; set it to "on-demand" in {manifest_path.name} '
        "so the daemon can serve it",
        err=True,
    )
    return True


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
    from mlx_lama.cli._targets import ModelNotFoundError
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
