"""``mlx-lama launch TOOL --config``: write the agent's settings into its own files.

Where each tool keeps them (the variables it documents, read at call time):

- Claude Code: ``settings.json`` in ``$CLAUDE_CONFIG_DIR``, else ``~/.claude``;
- Codex: ``mlx-lama.config.toml`` (the profile ``codex --profile mlx-lama`` reads)
  in ``$CODEX_HOME``, else ``~/.codex``; its ``config.toml`` is only touched to
  drop an old ``[profiles.mlx-lama]`` that Codex would refuse;
- OpenCode: ``opencode/opencode.json`` in ``$XDG_CONFIG_HOME``, else ``~/.config``.

What to write is decided in ``cli/_agents.py``; this module reads, merges and
writes. A file that is there is merged into, never replaced wholesale; one it
cannot read as JSON or TOML is left alone with an error. Each write is atomic
and a changed file is first copied to ``MLX_LAMA_HOME/backups``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlx_lama import paths
from mlx_lama.atomic import atomic_write_text
from mlx_lama.cli import _agents
from mlx_lama.cli._agents import Agent, Endpoint
from mlx_lama.errors import MlxLamaError


@dataclass(frozen=True, slots=True)
class Written:
    """One file ``--config`` wrote (or found already as it would write it)."""

    path: Path
    backup: Path | None  # the copy of the file as it was, when it changed
    changed: bool


def claude_settings_path(environ: Mapping[str, str]) -> Path:
    folder = environ.get("CLAUDE_CONFIG_DIR")
    return (Path(folder).expanduser() if folder else Path.home() / ".claude") / "settings.json"


def codex_home(environ: Mapping[str, str]) -> Path:
    folder = environ.get("CODEX_HOME")
    return Path(folder).expanduser() if folder else Path.home() / ".codex"


def opencode_config_path(environ: Mapping[str, str]) -> Path:
    folder = environ.get("XDG_CONFIG_HOME")
    base = Path(folder).expanduser() if folder else Path.home() / ".config"
    return base / "opencode" / "opencode.json"


def configure(agent: Agent, endpoint: Endpoint, environ: Mapping[str, str]) -> list[Written]:
    """Write ``agent``'s settings for ``endpoint``; the files, in the order written."""
    if agent.name == "claude":
        path = claude_settings_path(environ)
        merged = _agents.merge_claude_settings(read_json(path), endpoint)
        return [write(path, json.dumps(merged, indent=2) + "\n")]
    if agent.name == "codex":
        home = codex_home(environ)
        written = []
        root = home / "config.toml"
        if root.is_file():
            text = read_text(root)
            written.append(write(root, _toml(root, _agents.drop_legacy_codex_profile, text)))
        profile = home / f"{_agents.PROVIDER}.config.toml"
        text = read_text(profile) if profile.is_file() else ""
        edited = _toml(profile, lambda old: _agents.codex_profile(old, endpoint), text)
        written.append(write(profile, edited))
        return [w for w in written if w.changed or w.path == profile]
    if agent.name == "opencode":
        path = opencode_config_path(environ)
        merged = _agents.merge_opencode(read_json(path), endpoint)
        return [write(path, json.dumps(merged, indent=2) + "\n")]
    raise ValueError(agent.name)


def read_claude_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    """Claude Code's user settings, or {} when they are missing or unreadable."""
    try:
        return read_json(claude_settings_path(environ))
    except MlxLamaError:
        return {}


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; {} when there is no file. Raises MlxLamaError for
    anything else, so a file we cannot merge into is never overwritten."""
    if not path.exists():
        return {}
    text = read_text(path)
    try:
        value = json.loads(text) if text.strip() else {}
    except ValueError as error:
        raise _unreadable(path, f"it is not plain JSON ({error})") from None
    if not isinstance(value, dict):
        raise _unreadable(path, "it does not hold a JSON object")
    return value


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as error:
        raise MlxLamaError(f"cannot read {path}: {error}") from None


def write(path: Path, text: str) -> Written:
    """Replace ``path`` with ``text`` atomically, backing up the old file when it differs."""
    old = read_text(path) if path.exists() else None
    if old == text:
        return Written(path, None, changed=False)
    backup = _backup(path) if old is not None else None
    try:
        atomic_write_text(path, text)
    except OSError as error:
        raise MlxLamaError(f"cannot write {path}: {error.strerror or error}") from None
    return Written(path, backup, changed=True)


def _backup(path: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    backup = paths.home() / "backups" / f"{path.parent.name}-{path.name}.{stamp}"
    try:
        backup.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, backup)
    except OSError as error:
        raise MlxLamaError(
            f"cannot back up {path} to {backup}: {error.strerror or error}",
            hint="nothing was changed",
        ) from None
    return backup


def _toml(path: Path, edit: Callable[[str], str], text: str) -> str:
    from tomlkit.exceptions import TOMLKitError

    try:
        return edit(text)
    except TOMLKitError as error:
        raise _unreadable(path, f"it is not valid TOML ({error})") from None


def _unreadable(path: Path, why: str) -> MlxLamaError:
    return MlxLamaError(
        f"cannot merge into {path}: {why}",
        hint="fix it or move it away, then run again; nothing was changed",
    )
