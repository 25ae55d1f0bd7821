"""User settings: ``$MLX_LAMA_HOME/config.yaml`` plus ``MLX_LAMA_*`` environment variables.

Precedence, highest first: environment variable, ``config.yaml``, built-in default.
The keys are the ones the earlier mlx-lama wrote (``default_backend``,
``default_port``), so an old ``config.yaml`` keeps working.

Called by the CLI (``load_settings()``) when it needs a default backend or port,
Every problem becomes a
:class:`~mlx_lama.errors.ConfigError` that names the file or variable, the key and
the fix. This module must not print, cache settings behind the caller's back, or
own Hugging Face locations (those belong to huggingface_hub). ``MLX_LAMA_HOME``
itself is read by :mod:`mlx_lama.paths`; it decides where ``config.yaml`` lives,
so it cannot be set inside that file.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)
from pydantic_settings.exceptions import SettingsError

from mlx_lama import paths
from mlx_lama.errors import ConfigError
from mlx_lama.schema.manifest import BUILTIN_BACKENDS
from mlx_lama.yamlfile import read_yaml_file

if TYPE_CHECKING:
    pass

__all__ = [
    "DEFAULT_BACKEND",
    "DEFAULT_PORT",
    "ENV_PREFIX",
    "KNOWN_BACKENDS",
    "Settings",
    "load_settings",
]

KNOWN_BACKENDS: Final = BUILTIN_BACKENDS  # the engines a manifest can name without [backends]
DEFAULT_BACKEND: Final = "mlx-lm"
DEFAULT_PORT: Final = 8000
ENV_PREFIX: Final = "MLX_LAMA_"


@dataclass(frozen=True, slots=True)
class Settings:
    """The user's settings, resolved once by :func:`load_settings`."""

    home: Path
    default_backend: str = DEFAULT_BACKEND
    default_port: int = DEFAULT_PORT


def load_settings() -> Settings:
    """Read ``config.yaml`` and ``MLX_LAMA_*`` now (no cache) and return the settings.

    Raises :class:`ConfigError` for a broken file or a bad variable.
    """
    home = paths.home()
    config_file = paths.config_file()
    try:
        model = _SettingsModel()
    except ValidationError as exc:
        raise _validation_to_config_error(exc, config_file) from None
    except SettingsError as exc:
        raise ConfigError(
            f"cannot read settings: {exc}",
            hint=f"check the {ENV_PREFIX}* variables and {config_file}",
        ) from None
    return Settings(
        home=home, default_backend=model.default_backend, default_port=model.default_port
    )


# --- internals -------------------------------------------------------------------------


def _did_you_mean(word: str, choices: tuple[str, ...] | list[str], cutoff: float = 0.5) -> str:
    """``did you mean 'x'?`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=cutoff)
    return f"did you mean {close[0]!r}?" if close else ""


class _ConfigFileSource(YamlConfigSettingsSource):
    """``config.yaml`` through our strict reader, with key checks that name the fix."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        self._path = path
        if path.exists() and not path.is_file():
            raise ConfigError(
                f"{path} is not a file", hint="remove it, or make it a YAML file of settings"
            )
        super().__init__(settings_cls, yaml_file=path)

    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        path = Path(str(file_path))
        data = read_yaml_file(path)
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigError(
                f"{path}: expected a mapping of settings, found {_kind(data)}",
                hint=f"write `key: value` lines in {path}, e.g. `default_port: 8000`",
            )
        known = tuple(_SettingsModel.model_fields)
        for key in data:
            if key == "home":
                raise ConfigError(
                    f"{path}: `home` cannot be set in config.yaml "
                    "(that file lives inside the home folder)",
                    hint="remove the `home` line and set the MLX_LAMA_HOME environment variable "
                    "instead",
                )
            if not isinstance(key, str) or key not in known:
                hint = _did_you_mean(str(key), known)
                raise ConfigError(
                    f"{path}: unknown setting {key!r}" + (f"; {hint}" if hint else ""),
                    hint=f"known settings: {', '.join(known)}; remove or rename it in {path}",
                )
        return data


class _SettingsModel(BaseSettings):
    """Validation of the raw values; turned into :class:`Settings` by load_settings."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        case_sensitive=False,
        env_ignore_empty=True,
        extra="forbid",
        frozen=True,
    )

    default_backend: str = DEFAULT_BACKEND
    default_port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)

    @field_validator("default_backend", mode="before")
    @classmethod
    def _known_backend(cls, value: object) -> object:
        if not isinstance(value, str):
            return value  # the str type check reports it
        backend = value.strip().lower()
        if backend not in KNOWN_BACKENDS:
            hint = _did_you_mean(backend, KNOWN_BACKENDS)
            raise ValueError(f"unknown backend {value!r}" + (f"; {hint}" if hint else ""))
        return backend

    @field_validator("default_port", mode="before")
    @classmethod
    def _not_a_bool(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError("expected a port number, not true/false")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # No .env or secrets files: only the environment and config.yaml, env first.
        return (init_settings, env_settings, _ConfigFileSource(settings_cls, paths.config_file()))


_VALID_VALUES: Final = {
    "default_backend": f"one of {', '.join(KNOWN_BACKENDS)}",
    "default_port": "a port number from 1 to 65535",
}


def _validation_to_config_error(exc: ValidationError, config_file: Path) -> ConfigError:
    """Say which variable or file line is wrong, rather than pydantic's report."""
    problems: list[str] = []
    fixes: list[str] = []
    for error in exc.errors():
        key = str(error["loc"][0]) if error["loc"] else "?"
        message = str(error["msg"]).removeprefix("Value error, ")
        valid = _VALID_VALUES.get(key, "a valid value")
        variable = _env_variable_for(key)
        if variable is not None:
            where = f"environment variable {variable}={os.environ[variable]!r}"
            fixes.append(f"set {variable} to {valid}, or unset it")
        else:
            where = f"{config_file}: {key}: {error.get('input')!r}"
            fixes.append(f"set `{key}` in {config_file} to {valid}")
        problems.append(f"{where}: {message}")
    return ConfigError("; ".join(problems), hint="; ".join(fixes))


def _env_variable_for(key: str) -> str | None:
    """The environment variable that set settings key ``key``, if any (case-insensitive)."""
    wanted = f"{ENV_PREFIX}{key}".upper()
    for name, value in os.environ.items():
        if name.upper() == wanted and value != "":
            return name
    return None


def _kind(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return f"a {type(value).__name__}"
