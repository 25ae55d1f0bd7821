"""``mlx-lama launch TOOL``: start a coding agent on a local model, like ``ollama launch``.

TOOL is ``claude`` (Claude Code, through the gateway's Anthropic API),
``codex`` (the Responses API) or ``opencode`` (chat completions). The model
is resolved and, when missing, pulled as ``run`` does (``cli/run.py``); the
daemon serving the manifest is used, or started in the background
(``cli/_daemon_start.py``); then the tool runs in this terminal with the
settings of ``cli/_agents.py`` passed in its environment and arguments, and
its exit code is ours. ``--config`` writes those settings into the tool's own
files instead (``cli/_agent_files.py``) and starts nothing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mlx_lama.cli._agents import AGENTS, Agent, Endpoint
from mlx_lama.cli._app import app
from mlx_lama.cli._common import ManifestFile, handles_errors
from mlx_lama.errors import MlxLamaError, UsageError

if TYPE_CHECKING:
    from mlx_lama.cli._agent_files import Written
    from mlx_lama.schema.manifest import Manifest


@app.command(no_args_is_help=True)
@handles_errors
def launch(
    tool: Annotated[
        str,
        typer.Argument(
            help=f"The agent to start: {', '.join(AGENTS)}.", metavar="TOOL", show_default=False
        ),
    ],
    args: Annotated[
        list[str] | None,
        typer.Argument(help="Arguments for the agent, after --.", metavar="[-- ARGS]..."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            metavar="NAME",
            help="Model: a manifest name or alias, or a repo id (pulled and added when new). "
            "Default: the manifest's only model.",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        bool,
        typer.Option(
            "--config", help="Write the agent's settings into its own config files; start nothing."
        ),
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Pull a missing model without asking.")
    ] = False,
    file: ManifestFile = None,
) -> None:
    """Start a coding agent (claude, codex, opencode) on a model of the manifest.

    The daemon serving the manifest is used, or started in the background
    when none runs (it keeps running afterwards; `kill PID` stops it). The
    agent gets the gateway's address and the model through its environment
    and arguments, for this run only: claude the ANTHROPIC_* variables, codex
    -c overrides for a provider "mlx-lama", opencode OPENCODE_CONFIG_CONTENT.
    Its exit code is launch's.

    With --config nothing starts: the settings are merged into the agent's
    own files (claude: settings.json in $CLAUDE_CONFIG_DIR or ~/.claude;
    codex: the profile mlx-lama.config.toml in $CODEX_HOME or ~/.codex, for
    `codex --profile mlx-lama`; opencode: opencode/opencode.json in
    $XDG_CONFIG_HOME or ~/.config), the old file copied to
    ~/.mlx-lama/backups first.
    """
    from mlx_lama.cli.run import let_daemon_serve
    from mlx_lama.schema import find_manifest, load_manifest

    agent = agent_named(tool)
    program = None if config else find_program(agent)
    path = find_manifest(file).path
    key = choose_model(path, load_manifest(path), model, ask=sys.stdin.isatty() and not yes)
    manifest = load_manifest(path)
    changed = let_daemon_serve(path, manifest, key)
    api_key = manifest.server.api_key
    if config:
        configure(agent, path, manifest, Endpoint(gateway_url(path, manifest), key, api_key))
        return
    assert program is not None
    raise typer.Exit(start(agent, program, path, key, api_key, changed=changed, args=args or []))


def start(
    agent: Agent,
    program: str,
    path: Path,
    key: str,
    api_key: str | None,
    *,
    changed: bool,
    args: Sequence[str],
) -> int:
    """Make sure the daemon serves ``key`` (starting it when none runs), then run the
    agent against it; the agent's exit code. ``changed``: the manifest was just edited."""
    from mlx_lama.cli._daemon_start import ensure_daemon

    daemon, started = ensure_daemon(path, api_key)
    if started:
        from mlx_lama import paths

        typer.echo(
            f"started the mlx-lama daemon (pid {daemon.pid}) on {daemon.url}, logging to "
            f"{paths.logs_dir() / 'daemon.log'}; it keeps running after {agent.program} "
            f"exits: `kill {daemon.pid}` stops it",
            err=True,
        )
    elif changed:
        daemon.wait_applied()
    endpoint = Endpoint(daemon.url, key, api_key)
    warn_claude_settings(agent, endpoint)
    typer.echo(f"launching {agent.title} with {key} on {daemon.url}", err=True)
    return run_agent(agent, program, endpoint, args)


def agent_named(name: str) -> Agent:
    agent = AGENTS.get(name)
    if agent is None:
        raise UsageError(f"unknown tool {name!r}", hint=f"launch supports: {', '.join(AGENTS)}")
    return agent


def find_program(agent: Agent) -> str:
    """The agent's executable on PATH; a message saying how to install it when absent."""
    program = shutil.which(agent.program)
    if program is None:
        raise MlxLamaError(
            f"{agent.title} (`{agent.program}`) is not on PATH",
            hint=f"install it: {agent.install}",
        )
    return program


def choose_model(path: Path, manifest: Manifest, name: str | None, *, ask: bool) -> str:
    """``--model``, resolved (and pulled when missing), else the manifest's only model."""
    from mlx_lama.cli.run import ensure_model

    if name is not None:
        return ensure_model(path, name, ask=ask)
    names = sorted(manifest.models)
    if len(names) == 1:
        return ensure_model(path, names[0], ask=ask)
    where = f"{path.name} has " + (f"{len(names)} models: {', '.join(names)}" if names else "none")
    raise UsageError(
        f"which model? {where}", hint="pass --model NAME (a new one is pulled and added)"
    )


def gateway_url(path: Path, manifest: Manifest) -> str:
    """Where the gateway is: the running daemon's address, else where `serve` would listen."""
    from mlx_lama.cli.daemonclient import daemon_for

    daemon = daemon_for(path, manifest.server.api_key)
    if daemon is not None:
        return daemon.url
    from mlx_lama.gateway.server import listen_address

    return listen_address(manifest, insecure=True).url


def configure(agent: Agent, path: Path, manifest: Manifest, endpoint: Endpoint) -> None:
    """``--config``: write the settings, then say what was written and how to start."""
    from mlx_lama.cli._agent_files import configure as write_settings

    for written in write_settings(agent, endpoint, os.environ):
        typer.echo(describe(written))
    typer.echo(f"{agent.title} is set to use {endpoint.model} on {endpoint.url}.")
    if endpoint.api_key and agent.name != "claude":
        typer.echo("It reads [server] api_key from $MLX_LAMA_API_KEY: export that first.")
    typer.echo(
        f"Start it with `{agent.start}` while `mlx-lama serve -f {path}` runs, "
        f"or with `mlx-lama launch {agent.name}`, which starts the daemon when needed."
    )


def describe(written: Written) -> str:
    if not written.changed:
        return f"{written.path}: already up to date"
    if written.backup is None:
        return f"wrote {written.path}"
    return f"updated {written.path} (the old file is in {written.backup})"


def warn_claude_settings(agent: Agent, endpoint: Endpoint) -> None:
    """Claude Code's settings.json may override the environment: say so when it would."""
    if agent.name != "claude":
        return
    from mlx_lama.cli._agent_files import claude_settings_path, read_claude_settings
    from mlx_lama.cli._agents import claude_overridden

    clashes = claude_overridden(read_claude_settings(os.environ), endpoint)
    if clashes:
        typer.echo(
            f"warning: {claude_settings_path(os.environ)} sets {', '.join(clashes)} under "
            f'"env" to other values, which Claude Code may use instead; `mlx-lama launch '
            f"claude --config` updates them",
            err=True,
        )


def run_agent(agent: Agent, program: str, endpoint: Endpoint, args: Sequence[str]) -> int:
    """Run the agent in this terminal until it exits; its exit code (128 + N for signal N)."""
    from mlx_lama.cli._agents import launch_command

    argv, extra = launch_command(agent, endpoint, args, os.environ)
    argv[0] = program
    # The agent handles Ctrl-C itself; we only wait. A handler, unlike SIG_IGN, is
    # reset to the default in the child when it execs.
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGINT, signal.SIGQUIT)}
    try:
        code = subprocess.call(argv, env={**os.environ, **extra})
    except OSError as error:
        raise MlxLamaError(f"cannot run {program}: {error}") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


def _ignore(signum: int, frame: object) -> None:
    return None
