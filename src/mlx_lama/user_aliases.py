"""The user's alias layer: ``$MLX_LAMA_HOME/registry.yaml``, read into :class:`Alias`es.

The earlier mlx-lama's format: ``models: {ALIAS: {repo: ORG/NAME, description,
default_backend, quantization}}``. A broken file is never ignored: anything wrong
raises one :class:`ConfigError` naming the file, every bad alias and the fix.
:mod:`mlx_lama.registry` stacks this layer between the built-in table and the
manifest's aliases. pydantic and yaml are imported only when a file is read.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from mlx_lama import paths
from mlx_lama.errors import ConfigError
from mlx_lama.names import canonical_name, check_model_name, is_repo_id

AliasSource = Literal["builtin", "user", "manifest"]

_USER_KEYS: Final = ("repo", "description", "default_backend", "quantization")


@dataclass(frozen=True, slots=True)
class Alias:
    """One alias in one layer. For builtin and user aliases ``target`` is a repo id;
    for manifest aliases it is a manifest model name or another manifest alias.
    ``shadowed_by`` is set only in :meth:`Registry.entries` output, on an alias a
    higher layer hides."""

    name: str
    target: str
    source: AliasSource
    description: str = ""
    default_backend: str | None = None
    quantization: str | None = None
    kind: Literal["generate", "embedding"] = "generate"  # what its model does
    shadowed_by: AliasSource | None = None


def read_user_aliases(path: Path | None = None) -> tuple[Alias, ...]:
    """The aliases in the user's ``registry.yaml`` (default ``paths.registry_file()``).

    A missing file gives no aliases. Anything wrong (YAML syntax, shape, unknown
    keys, an invalid alias name, a repo that is not ``ORG/NAME``, two spellings
    of one name) raises one :class:`ConfigError` naming the file, every bad alias
    and the fix.
    """
    from mlx_lama.yamlfile import read_yaml_file

    path = paths.registry_file() if path is None else path
    if not path.exists():
        return ()
    if not path.is_file():
        raise ConfigError(f"{path} is not a file", hint=f"remove it, or make {path} a YAML file")
    data = read_yaml_file(path)
    if data is None:
        return ()
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping with a `models:` key, found {type(data).__name__}",
            hint=_file_hint(path),
        )
    if data.get("models", {}) is None:  # `models:` with nothing under it
        data = {**data, "models": {}}
    return _parse_user_file(path, data)


def _parse_user_file(path: Path, data: dict[Any, Any]) -> tuple[Alias, ...]:
    """Validate the parsed file with pydantic (imported here, not at module import)."""
    from pydantic import BaseModel, ConfigDict, ValidationError

    class _Entry(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        repo: str
        description: str | None = None
        default_backend: str | None = None
        quantization: str | None = None

    class _File(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        models: dict[str, _Entry] = {}

    problems: list[str] = []
    try:
        parsed = _File.model_validate(data)
    except ValidationError as exc:
        problems.extend(_describe_pydantic_error(dict(e)) for e in exc.errors())
        raise _user_file_error(path, problems) from None

    aliases: list[Alias] = []
    seen: dict[str, str] = {}
    for name, entry in parsed.models.items():
        name_problem = check_model_name(name)
        if name_problem is not None:
            problems.append(f"alias {name!r}: {name_problem} (rename it)")
            continue
        if not is_repo_id(entry.repo):
            problems.append(
                f"alias {name!r}: repo {entry.repo!r} is not a Hugging Face repo id "
                "(write it as ORG/NAME, e.g. mlx-community/Qwen3-4B-4bit)"
            )
            continue
        key = canonical_name(name)
        if key in seen:
            problems.append(
                f"alias {name!r} repeats {seen[key]!r} (names ignore case and imply "
                "':latest'; keep one of them)"
            )
            continue
        seen[key] = name
        aliases.append(
            Alias(
                name=name,
                target=entry.repo,
                source="user",
                description=entry.description or "",
                default_backend=entry.default_backend,
                quantization=entry.quantization,
            )
        )
    if problems:
        raise _user_file_error(path, problems)
    return tuple(aliases)


def _describe_pydantic_error(error: dict[str, Any]) -> str:
    """One line for one pydantic error in registry.yaml, with its fix."""
    loc: tuple[Any, ...] = tuple(error.get("loc", ()))
    kind = str(error.get("type", ""))
    message = str(error.get("msg", "invalid"))
    if len(loc) == 1 and kind == "extra_forbidden":
        return f"unknown top-level key {loc[0]!r} (the file holds only `models:`; remove it)"
    if loc[:1] == ("models",) and len(loc) == 1:
        return "`models` must be a mapping of alias names to {repo: ORG/NAME, ...}"
    if loc[:1] != ("models",) or len(loc) < 2:
        return f"{'.'.join(map(str, loc))}: {message}"
    alias = loc[1]
    if len(loc) >= 3 and loc[2] == "[key]":
        return f"alias {alias!r}: alias names must be text (put the name in quotes)"
    if len(loc) == 2:
        return (
            f"alias {alias!r}: expected a mapping like `{{repo: ORG/NAME}}`, "
            f"found {type(error.get('input')).__name__}"
        )
    key = str(loc[2])
    if kind == "missing":
        return f"alias {alias!r}: `{key}` is missing (add `{key}: ORG/NAME`)"
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(key, _USER_KEYS, n=1, cutoff=0.5)
        guess = f"did you mean {close[0]!r}? " if close else ""
        return f"alias {alias!r}: unknown key {key!r} ({guess}allowed: {', '.join(_USER_KEYS)})"
    return f"alias {alias!r}: `{key}`: {message} (quote it as text)"


def _user_file_error(path: Path, problems: list[str]) -> ConfigError:
    if len(problems) == 1:
        return ConfigError(f"{path}: {problems[0]}", hint=_file_hint(path))
    listed = "\n".join(f"  - {p}" for p in problems)
    return ConfigError(f"{path}: {len(problems)} problems:\n{listed}", hint=_file_hint(path))


def _file_hint(path: Path) -> str:
    return (
        f"fix {path} (format: `models: {{ALIAS: {{repo: ORG/NAME, description: ...}}}}`), "
        "or move it aside to use only the built-in aliases"
    )
