"""User settings: ``$MLX_LAMA_HOME/config.yaml`` plus ``MLX_LAMA_*`` environment variables.

Precedence, highest first: environment variable, ``config.yaml``, built-in default.
The keys are the ones the earlier mlx-lama wrote (``default_backend``,
``default_port``), so an old ``config.yaml`` keeps working. What they mean:

* ``default_backend``: the backend of a model whose entry and ``[defaults]`` both
  name none (a manifest's own word always wins).
* ``default_port``: where the search for a port starts, for a model server whose
  entry has no ``port`` (unset: any free port the system hands out).

Only a value the user set changes anything (:meth:`Settings.user_backend`,
:meth:`Settings.user_port`): with neither file nor variable, mlx-lama behaves as
if this module did not exist. The schema's loader calls :func:`user_defaults` and
applies them to every manifest it loads; ``mlx-lama config`` shows them.

Every problem becomes a :class:`~mlx_lama.errors.ConfigError` that names the file
and line, or the variable, the key and the fix. This module must not print, cache
settings behind the caller's back, or own Hugging Face locations (those belong to
huggingface_hub). ``MLX_LAMA_HOME`` itself is read by :mod:`mlx_lama.paths`; it
decides where ``config.yaml`` lives, so it cannot be set inside that file. Cheap to
import: PyYAML is loaded only when a ``config.yaml`` exists.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from mlx_lama import paths
from mlx_lama.backend_names import BUILTIN_BACKENDS, DEFAULT_BACKEND, EMBEDDING_BACKEND
from mlx_lama.errors import ConfigError
from mlx_lama.yamlfile import read_yaml_file_with_lines

__all__ = [
    "BUILT_IN",
    "DEFAULT_BACKEND",
    "DEFAULT_PORT",
    "ENV_PREFIX",
    "KNOWN_BACKENDS",
    "SETTING_KEYS",
    "Settings",
    "UserDefaults",
    "load_settings",
    "user_defaults",
]

# The engines default_backend may name: those of text models (an embedding model runs
# on EMBEDDING_BACKEND whatever the default says).
KNOWN_BACKENDS: Final = tuple(b for b in BUILTIN_BACKENDS if b != EMBEDDING_BACKEND)
DEFAULT_PORT: Final = 8000  # shown as the built-in value; unset, servers take any free port
ENV_PREFIX: Final = "MLX_LAMA_"
SETTING_KEYS: Final = ("default_backend", "default_port")
BUILT_IN: Final = "built-in"


@dataclass(frozen=True, slots=True)
class Settings:
    """The user's settings, resolved once by :func:`load_settings`.

    ``sources`` says where each key the user set came from (``FILE:LINE`` or
    ``environment variable NAME``); a key not in it has its built-in value.
    """

    home: Path
    default_backend: str = DEFAULT_BACKEND
    default_port: int = DEFAULT_PORT
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def source_of(self, key: str) -> str:
        """Where ``key``'s value comes from: ``FILE:LINE``, the variable, or ``built-in``."""
        return self.sources.get(key, BUILT_IN)

    @property
    def user_backend(self) -> str | None:
        """``default_backend`` when the user set it, else None (the manifest's default holds)."""
        return self.default_backend if "default_backend" in self.sources else None

    @property
    def user_port(self) -> int | None:
        """``default_port`` when the user set it, else None (servers take any free port)."""
        return self.default_port if "default_port" in self.sources else None


@dataclass(frozen=True, slots=True)
class UserDefaults:
    """What the user's settings fill in where a manifest says nothing.

    ``error`` is set when the settings could not be read; whoever relies on a
    setting raises it then (a broken ``config.yaml`` must not stop a command
    that needs none of it).
    """

    backend: str | None = None
    port: int | None = None
    error: ConfigError | None = None


def load_settings() -> Settings:
    """Read ``config.yaml`` and ``MLX_LAMA_*`` now (no cache) and return the settings.

    Raises :class:`ConfigError` for a broken file or a bad variable, naming every
    problem found.
    """
    config_file = paths.config_file()
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    problems: list[tuple[str, str]] = []  # (what is wrong, where; the fix)
    file_values, lines = _read_file(config_file)
    for key, raw in file_values.items():
        where = f"{config_file}:{lines.get(key, 1)}"
        value, why = _check(key, raw)
        if why is None:
            values[key], sources[key] = value, where
        else:
            problems.append((f"{where}: {key}: {why}", f"set it to {_VALID[key]} in {config_file}"))
    for key in SETTING_KEYS:
        variable = _env_variable_for(key)
        if variable is None:
            continue
        raw = os.environ[variable]
        value, why = _check(key, raw)
        if why is None:
            values[key], sources[key] = value, f"environment variable {variable}"
        else:
            problems.append(
                (f"{variable}={raw!r}: {why}", f"set {variable} to {_VALID[key]}, or unset it")
            )
    if problems:
        raise _config_error(problems)
    return Settings(
        home=paths.home(),
        default_backend=str(values.get("default_backend", DEFAULT_BACKEND)),
        default_port=int(str(values.get("default_port", DEFAULT_PORT))),
        sources=sources,
    )


def user_defaults() -> UserDefaults:
    """The settings the user set, for the manifest loader; never raises (see
    :class:`UserDefaults`)."""
    if not paths.config_file().exists() and not any(map(_env_variable_for, SETTING_KEYS)):
        return UserDefaults()  # the common case costs a stat and no import
    try:
        settings = load_settings()
    except ConfigError as error:
        return UserDefaults(error=error)
    return UserDefaults(backend=settings.user_backend, port=settings.user_port)


# --- internals -------------------------------------------------------------------------


def _did_you_mean(word: str, choices: tuple[str, ...] | list[str], cutoff: float = 0.5) -> str:
    """``did you mean 'x'?`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=cutoff)
    return f"did you mean {close[0]!r}?" if close else ""


def _read_file(path: Path) -> tuple[dict[str, object], dict[object, int]]:
    """``config.yaml``'s settings and the line of each; whole-file problems raise."""
    if not path.exists():
        return {}, {}
    if not path.is_file():
        raise ConfigError(
            f"{path} is not a file", hint="remove it, or make it a YAML file of settings"
        )
    data, lines = read_yaml_file_with_lines(path)
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of settings, found {_kind(data)}",
            hint=f"write `key: value` lines in {path}, e.g. `default_backend: mlx-lm`",
        )
    for key in data:
        where = f"{path}:{lines.get(key, 1)}"
        if key == "home":
            raise ConfigError(
                f"{where}: `home` cannot be set in config.yaml "
                "(that file lives inside the home folder)",
                hint="remove the `home` line and set the MLX_LAMA_HOME environment variable "
                "instead",
            )
        if not isinstance(key, str) or key not in SETTING_KEYS:
            guess = _did_you_mean(str(key), SETTING_KEYS)
            raise ConfigError(
                f"{where}: unknown setting {key!r}" + (f"; {guess}" if guess else ""),
                hint=f"known settings: {', '.join(SETTING_KEYS)}; remove or rename it in {path}",
            )
    return {str(k): v for k, v in data.items()}, lines


def _check_backend(value: object) -> tuple[object, str | None]:
    if not isinstance(value, str):
        return None, f"{_show(value)} is not a backend name"
    backend = value.strip().lower()
    if backend not in KNOWN_BACKENDS:
        guess = _did_you_mean(backend, KNOWN_BACKENDS)
        return None, f"unknown backend {value!r}" + (f"; {guess}" if guess else "")
    return backend, None


def _check_port(value: object) -> tuple[object, str | None]:
    if isinstance(value, str) and value.strip().isdecimal():
        value = int(value.strip())  # a variable is text; "8000" in the file is accepted too
    if isinstance(value, bool) or not isinstance(value, int):
        return None, f"{_show(value)} is not a port number"
    if not 1 <= value <= 65535:
        return None, f"{value} is out of range"
    return value, None


_CHECKS: Final[dict[str, Callable[[object], tuple[object, str | None]]]] = {
    "default_backend": _check_backend,
    "default_port": _check_port,
}
_VALID: Final = {
    "default_backend": f"one of {', '.join(KNOWN_BACKENDS)}",
    "default_port": "a port number from 1 to 65535",
}


def _check(key: str, value: object) -> tuple[object, str | None]:
    """``(value, None)`` normalised, or ``(None, what is wrong)``. Pure."""
    return _CHECKS[key](value)


def _config_error(problems: list[tuple[str, str]]) -> ConfigError:
    if len(problems) == 1:
        message, fix = problems[0]
        return ConfigError(message, hint=fix)
    listed = "\n".join(f"  {message} ({fix})" for message, fix in problems)
    return ConfigError(f"{len(problems)} problems in the user settings:\n{listed}")


def _env_variable_for(key: str) -> str | None:
    """The environment variable that sets settings key ``key``, if any (case-insensitive;
    an empty one counts as unset)."""
    wanted = f"{ENV_PREFIX}{key}".upper()
    for name, value in os.environ.items():
        if name.upper() == wanted and value != "":
            return name
    return None


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "an empty value"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return repr(value)


def _kind(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return f"a {type(value).__name__}"
