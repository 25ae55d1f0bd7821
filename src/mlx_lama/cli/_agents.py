"""What ``mlx-lama launch`` tells each coding agent: settings per tool, as data.

For Claude Code, Codex and OpenCode: the environment and arguments that point
one run at the gateway, and the edits ``--config`` makes to each tool's own
configuration (merged into what is there). The file reading, writing and
backups are ``cli/_agent_files.py``'s; the command is ``cli/launch.py``.

Pure: no I/O, no logging. Sources, checked when this was written: Claude Code
reads ``ANTHROPIC_*`` variables, also from ``"env"`` in its settings.json, and
appends ``/v1/messages`` to ``ANTHROPIC_BASE_URL``; Codex takes ``-c key=value``
overrides (values in TOML) and, since 0.134, reads ``--profile NAME`` from
``$CODEX_HOME/NAME.config.toml`` (a ``[profiles.NAME]`` table in config.toml is
refused then); OpenCode merges ``OPENCODE_CONFIG_CONTENT`` (JSON) over its
config files and expands ``{env:VAR}`` in them.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PROVIDER = "mlx-lama"  # the provider id (Codex, OpenCode) and Codex profile name
API_KEY_ENV = "MLX_LAMA_API_KEY"  # holds [server] api_key for Codex and OpenCode
NO_KEY_TOKEN = "mlx-lama"  # Claude Code wants a non-empty token even where none is checked
OPENCODE_SCHEMA = "https://opencode.ai/config.json"
OPENCODE_CONTENT_ENV = "OPENCODE_CONFIG_CONTENT"
# Claude Code asks for its own model names for the main loop, background tasks and
# subagents; each of these variables maps one kind to our model.
CLAUDE_MODEL_VARIABLES = (
    "ANTHROPIC_MODEL",
    "ANTHROPIC_DEFAULT_OPUS_MODEL",
    "ANTHROPIC_DEFAULT_SONNET_MODEL",
    "ANTHROPIC_DEFAULT_HAIKU_MODEL",
    "CLAUDE_CODE_SUBAGENT_MODEL",
)
SECRET_VARIABLES = frozenset({"ANTHROPIC_AUTH_TOKEN", API_KEY_ENV})


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where an agent sends its requests: the gateway's root URL and the model name."""

    url: str  # http://HOST:PORT, no trailing slash
    model: str
    api_key: str | None = None

    @property
    def openai_url(self) -> str:
        return f"{self.url}/v1"


@dataclass(frozen=True, slots=True)
class Agent:
    """A coding agent ``launch`` can start."""

    name: str
    title: str
    program: str
    install: str  # how to install it, for the "not found" message
    start: str  # how to start it once ``--config`` has written its settings


AGENTS: dict[str, Agent] = {
    agent.name: agent
    for agent in (
        Agent(
            "claude",
            "Claude Code",
            "claude",
            "curl -fsSL https://claude.ai/install.sh | bash, or "
            "npm install -g @anthropic-ai/claude-code",
            "claude",
        ),
        Agent(
            "codex",
            "Codex",
            "codex",
            "npm install -g @openai/codex, or brew install codex",
            f"codex --profile {PROVIDER}",
        ),
        Agent(
            "opencode",
            "OpenCode",
            "opencode",
            "curl -fsSL https://opencode.ai/install | bash, or npm install -g opencode-ai",
            "opencode",
        ),
    )
}


# -- one run: environment and arguments ---------------------------------------------------


def claude_env(endpoint: Endpoint) -> dict[str, str]:
    """Claude Code's variables for ``endpoint``. The base URL has no ``/v1``."""
    env = {
        "ANTHROPIC_BASE_URL": endpoint.url,
        "ANTHROPIC_AUTH_TOKEN": endpoint.api_key or NO_KEY_TOKEN,
        "ANTHROPIC_API_KEY": "",  # else a key in the user's shell would be sent instead
    }
    env.update(dict.fromkeys(CLAUDE_MODEL_VARIABLES, endpoint.model))
    env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] = "1"  # no telemetry or update checks
    return env


def codex_provider(endpoint: Endpoint) -> dict[str, str]:
    """The ``[model_providers.mlx-lama]`` table: the Responses API on the gateway."""
    provider = {"name": PROVIDER, "base_url": endpoint.openai_url, "wire_api": "responses"}
    if endpoint.api_key:
        provider["env_key"] = API_KEY_ENV
    return provider


def codex_overrides(endpoint: Endpoint) -> list[str]:
    """``-c key=value`` arguments selecting the provider and model for one run."""
    values = {"model_provider": PROVIDER, "model": endpoint.model}
    values.update(
        {f"model_providers.{PROVIDER}.{k}": v for k, v in codex_provider(endpoint).items()}
    )
    args: list[str] = []
    for key, value in values.items():
        args += ["-c", f"{key}={json.dumps(value)}"]  # a JSON string is a TOML string
    return args


def opencode_config(endpoint: Endpoint, *, api_key: str | None) -> dict[str, Any]:
    """OpenCode's provider ``mlx-lama`` (chat completions on the gateway) and its model.
    ``api_key`` is what ``options.apiKey`` says: the key, or an ``{env:VAR}`` reference."""
    options: dict[str, str] = {"baseURL": endpoint.openai_url}
    if api_key:
        options["apiKey"] = api_key
    provider = {
        "npm": "@ai-sdk/openai-compatible",
        "name": "mlx-lama",
        "options": options,
        "models": {endpoint.model: {"name": endpoint.model}},
    }
    return {"provider": {PROVIDER: provider}, "model": f"{PROVIDER}/{endpoint.model}"}


def launch_command(
    agent: Agent, endpoint: Endpoint, args: Sequence[str], environ: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    """The argv (program first) and the variables to add to ``environ`` for one run of
    ``agent`` against ``endpoint``, with the user's ``args`` last. No file is changed."""
    if agent.name == "claude":
        return [agent.program, *args], claude_env(endpoint)
    if agent.name == "codex":
        env = {API_KEY_ENV: endpoint.api_key} if endpoint.api_key else {}
        return [agent.program, *codex_overrides(endpoint), *args], env
    if agent.name == "opencode":
        ours = opencode_config(endpoint, api_key=endpoint.api_key)
        content = merge_json(_json_object(environ.get(OPENCODE_CONTENT_ENV, "")), ours)
        return [agent.program, *args], {OPENCODE_CONTENT_ENV: json.dumps(content)}
    raise ValueError(agent.name)


def claude_overridden(settings: Mapping[str, Any], endpoint: Endpoint) -> list[str]:
    """The variables of ours that a settings.json ``"env"`` sets to other values (Claude
    Code may let them win over the environment launch passes)."""
    env = settings.get("env")
    if not isinstance(env, dict):
        return []
    ours = claude_env(endpoint)
    return sorted(
        k for k in ("ANTHROPIC_BASE_URL", "ANTHROPIC_MODEL") if k in env and env[k] != ours[k]
    )


# -- --config: merged into the tools' own files ---------------------------------------------


def merge_claude_settings(settings: Mapping[str, Any], endpoint: Endpoint) -> dict[str, Any]:
    """``settings`` (Claude Code's settings.json) with our variables set under ``"env"``;
    every other key and variable kept, in order."""
    merged = copy.deepcopy(dict(settings))
    env = merged.get("env")
    merged["env"] = {**(env if isinstance(env, dict) else {}), **claude_env(endpoint)}
    return merged


def merge_opencode(config: Mapping[str, Any], endpoint: Endpoint) -> dict[str, Any]:
    """``config`` (opencode.json) with provider ``mlx-lama`` and ``model`` set; the key
    is read from ``$MLX_LAMA_API_KEY`` rather than written into the file."""
    key_ref = f"{{env:{API_KEY_ENV}}}" if endpoint.api_key else None
    merged = merge_json(config, opencode_config(endpoint, api_key=key_ref))
    merged.setdefault("$schema", OPENCODE_SCHEMA)
    return merged


def codex_profile(text: str, endpoint: Endpoint) -> str:
    """The profile file ``mlx-lama.config.toml`` (given its ``text``, empty when new) with
    the model, provider and provider table set; its comments and other keys kept."""
    import tomlkit
    from tomlkit.items import Table

    doc = tomlkit.parse(text)
    doc["model"] = endpoint.model
    doc["model_provider"] = PROVIDER
    providers = doc.get("model_providers")
    if not isinstance(providers, Table):
        providers = tomlkit.table(is_super_table=True)
        doc["model_providers"] = providers
    table = tomlkit.table()
    table.update(codex_provider(endpoint))
    providers[PROVIDER] = table
    return tomlkit.dumps(doc)


def drop_legacy_codex_profile(text: str) -> str:
    """config.toml without a ``profile = "mlx-lama"`` selector or a ``[profiles.mlx-lama]``
    table, which Codex 0.134 refuses alongside ``--profile mlx-lama``; all else kept."""
    import tomlkit
    from tomlkit.items import Table

    doc = tomlkit.parse(text)
    if doc.get("profile") == PROVIDER:
        del doc["profile"]
    profiles = doc.get("profiles")
    if isinstance(profiles, Table) and PROVIDER in profiles:
        del profiles[PROVIDER]
        if not profiles:
            del doc["profiles"]
    return tomlkit.dumps(doc)


def merge_json(base: Mapping[str, Any], ours: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``ours`` merged in: objects key by key, anything else replaced."""
    merged = copy.deepcopy(dict(base))
    for key, value in ours.items():
        old = merged.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            merged[key] = merge_json(old, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text.strip() else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
