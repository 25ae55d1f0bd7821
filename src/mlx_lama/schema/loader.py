"""Read ``mlxlama.toml`` into a :class:`Manifest`, or explain every problem in it.

``load_manifest`` is what every command calls. It never stops at the first
mistake: a TOML syntax error ends the read (nothing after it can be trusted),
but otherwise a missing ``version = 1``, schema errors and the cross-entry
checks (ports, names, aliases, backends, repo xor path) are all collected and
raised together as one :class:`ManifestError`, each as
``FILE:LINE:COL: key.path: message (hint)``.

The user's settings (``config.yaml``, ``MLX_LAMA_DEFAULT_*``; :mod:`mlx_lama.config`)
fill what a manifest leaves out: ``default_backend`` for a model without a backend,
``default_port`` for a server without a port. This is the one place they are
applied, so every command, the daemon and the gateway agree. Reads the manifest
and the settings, nothing else.
"""

from __future__ import annotations

import json
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from mlx_lama.backend_names import DEFAULT_BACKEND
from mlx_lama.config import UserDefaults, user_defaults
from mlx_lama.errors import ManifestError, ManifestNotFoundError, Problem
from mlx_lama.schema import memo
from mlx_lama.schema.checks import cross_check
from mlx_lama.schema.checktools import closest
from mlx_lama.schema.locate import KeyPath, locate_keys, nearest_position, render_key_path
from mlx_lama.schema.manifest import SCHEMA_VERSION, Manifest, Parameters

# Ollama options that mean nothing to an MLX engine; named so the error can say so.
_OLLAMA_ONLY_OPTIONS = frozenset(
    {
        "num_batch", "num_gpu", "main_gpu", "use_mmap", "use_mlock", "num_thread",
        "num_keep", "typical_p", "draft_num_predict", "mirostat", "mirostat_tau",
        "mirostat_eta", "penalize_newline", "low_vram", "f16_kv", "logits_all",
        "vocab_only", "tfs_z",
    }
)  # fmt: skip
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_TOML_END = re.compile(r"\s*\(at end of document\)\s*$")


BOM = "\ufeff"


def load_manifest(path: Path | str) -> Manifest:
    """Read and validate the manifest at ``path``.

    Raises ManifestNotFoundError when there is no such file and ManifestError
    listing every problem when it is not a valid manifest; the user's settings'
    ConfigError when they are broken and the manifest relies on one of them.
    """
    source = Path(path)
    try:
        raw = source.read_bytes()
    except FileNotFoundError:
        raise ManifestNotFoundError(
            f"no manifest at {source}", hint="check the path, or create it with `version = 1`"
        ) from None
    except IsADirectoryError:
        raise ManifestNotFoundError(
            f"{source} is a folder, not a manifest", hint="name the mlxlama.toml file inside it"
        ) from None
    except PermissionError:
        raise ManifestNotFoundError(
            f"cannot read {source}: permission denied",
            hint=f"let your user read it (chmod u+r {source})",
        ) from None
    except OSError as exc:  # a link loop, an I/O error
        raise ManifestNotFoundError(
            f"cannot read {source}: {exc.strerror or exc}",
            hint="check the file (a link that loops, a disk error)",
        ) from None
    user = user_defaults()
    remembered = memo.recall(source, raw, memo_context(user))
    if remembered is not None:
        return with_user_defaults(remembered, user)
    text = decode_manifest(raw, source).removeprefix(BOM)
    manifest = parse_manifest(text, str(source), user=user)
    memo.remember(source, raw, manifest, memo_context(user))
    return manifest


def with_user_defaults(manifest: Manifest, user: UserDefaults) -> Manifest:
    """``manifest`` with the user's ``default_backend`` and ``default_port`` filled in.

    Raises the settings' ConfigError only when they are broken and the manifest
    relies on one of them (a model without a backend, a server without a port). Pure.
    """
    if user.error is not None and (
        manifest.relies_on_user_backend() or manifest.relies_on_user_port()
    ):
        raise user.error
    return replace(manifest, user_backend=user.backend, user_port=user.port)


def memo_context(user: UserDefaults) -> str:
    """What besides the bytes a remembered validation depends on: the backend of models
    that name none (it decides, say, which of them are external). Pure."""
    return user.backend or ""


def decode_manifest(raw: bytes, source: Path) -> str:
    """A manifest file's bytes as text (a leading byte-order mark kept); ManifestError
    naming the line when they are not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        problem = Problem(str(source), line, 1, "", "the file is not valid UTF-8 text")
        raise ManifestError(source, [problem]) from None


def parse_manifest(
    text: str, source: str = "mlxlama.toml", *, user: UserDefaults | None = None
) -> Manifest:
    """Validate manifest ``text``; ``source`` is the file name used in messages; ``user``
    (:func:`mlx_lama.config.user_defaults`) fills what it leaves out, as
    :func:`with_user_defaults` says (none by default). Pure."""
    from pydantic import BaseModel, ValidationError

    from mlx_lama.schema import validation

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(source, [_syntax_problem(exc, text, source)]) from None
    found = locate_keys(text)
    problems: list[Problem] = []
    if (unversioned := _unversioned(data, source)) is not None:
        problems.append(unversioned)

    def report(path: KeyPath, message: str, hint: str | None = None) -> None:
        position = nearest_position(found, path)
        problems.append(
            Problem(source, position.line, position.col, render_key_path(path), message, hint)
        )

    model: BaseModel | None = None
    try:
        model = validation.Manifest.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            path = tuple(error["loc"])
            message, hint = _describe(error, path)
            report(path, message, hint)
    user = user or UserDefaults()
    cross_check(data, report, user.backend or DEFAULT_BACKEND)

    if problems or model is None:
        raise ManifestError(source, problems)
    return with_user_defaults(Manifest.from_data(_fields_of(model)), user)


def _unversioned(data: Mapping[str, Any], source: str) -> Problem | None:
    """The problem with a manifest that does not say ``version = 1`` at its top level.

    Files must say which version they are, so that an empty file, or one an editor's
    in-place save has cut short, is refused (the daemon keeps the last good manifest
    in force) instead of read as a manifest that wants nothing.
    """
    if "version" in data:
        return None
    if not data:
        return Problem(
            source,
            1,
            1,
            "",
            "the file is empty (nothing but blanks and comments), so it is refused: a save "
            "caught halfway never stops servers",
            f"a manifest holds at least version = {SCHEMA_VERSION}",
        )
    return Problem(
        source,
        1,
        1,
        "",
        "the manifest does not say which version it is",
        f"add `version = {SCHEMA_VERSION}` as its first line",
    )


# -- TOML syntax ---------------------------------------------------------------


def _syntax_problem(exc: tomllib.TOMLDecodeError, text: str, source: str) -> Problem:
    message = str(exc)
    line, col = 1, 1
    if match := _TOML_POSITION.search(message):
        line, col = int(match.group(1)), int(match.group(2))
        message = message[: match.start()]
    elif match := _TOML_END.search(message):
        line = text.count("\n") + 1
        message = message[: match.start()]
    lines = text.splitlines()
    code = lines[line - 1] if 0 < line <= len(lines) else ""
    return Problem(source, line, col, "", f"TOML syntax: {message}", _syntax_hint(message, code))


def _syntax_hint(message: str, code: str) -> str | None:
    stripped = code.strip()
    if stripped.startswith("[") and re.match(r"\[+\s*(models|backends)\.[^\"']*[:/]", stripped):
        return 'quote names that contain ":" or "/", as in [models."qwen2.5:7b"]'
    if "twice" in message or "overwrite" in message:
        return "each table and key may appear only once"
    if message.startswith("Invalid value") or "Invalid initial character" in message:
        return 'put text values in double quotes, as in backend = "mlx-lm"'
    return None


# -- schema errors ---------------------------------------------------------------


def _describe(error: Mapping[str, Any], path: KeyPath) -> tuple[str, str | None]:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    if kind == "extra_forbidden":
        return _unknown_key(path)
    if kind == "missing":
        return "required key is missing", None
    if path == ("version",):
        return (
            f"this mlx-lama reads manifest version {SCHEMA_VERSION}, not {_show(value)}",
            f"write version = {SCHEMA_VERSION}, or upgrade mlx-lama",
        )
    if kind == "literal_error":
        expected = str(ctx.get("expected", ""))
        options = re.findall(r"'([^']*)'", expected)
        guess = closest(value, options) if isinstance(value, str) else None
        return f"must be one of {expected}, not {_show(value)}", guess
    simple = {
        "int_type": "must be a whole number",
        "int_from_float": "must be a whole number",
        "float_type": "must be a number",
        "bool_type": "must be true or false",
        "string_type": "must be a string",
        "list_type": "must be a list",
        "dict_type": "must be a table",
        "model_type": "must be a table",
    }
    if kind in simple:
        hint = None
        if kind != "string_type" and isinstance(value, str):
            hint = "remove the quotes"
        return f"{simple[kind]}, not {_show(value)}", hint
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "less_than_equal": ("at most", "le"),
        "greater_than": ("more than", "gt"),
        "less_than": ("less than", "lt"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return f"must be {words} {ctx.get(key)}, not {_show(value)}", None
    message = str(error.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    if hint_match := re.search(r" \(([^()]*)\)$", message):
        return message[: hint_match.start()], hint_match.group(1)
    return message, None


def _unknown_key(path: KeyPath) -> tuple[str, str | None]:
    key = str(path[-1])
    allowed = _keys_at(path[:-1])
    message = f"unknown key {key!r}"
    if path[:1] == ("models",) and len(path) == 3 and key in Parameters.__dataclass_fields__:
        table = render_key_path((*path[:-1], "parameters"))
        return message, f"sampling settings go under [{table}]"
    if key in _OLLAMA_ONLY_OPTIONS:
        return message, "an Ollama option that MLX engines do not use; remove it"
    guess = closest(key, allowed)
    if guess:
        return message, guess
    if allowed:
        return message, "allowed keys: " + ", ".join(allowed)
    return message, None


def _fields_of(value: Any) -> Any:
    """A validated model as nested dicts, keeping Duration and Size objects as they are
    (``model_dump`` would flatten those dataclasses into dicts)."""
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        return {name: _fields_of(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, dict):
        return {key: _fields_of(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_fields_of(item) for item in value]
    return value


def _keys_at(path: KeyPath) -> list[str]:
    """The keys the schema allows in the table at ``path`` (for did-you-mean)."""
    from pydantic import BaseModel

    from mlx_lama.schema import validation

    current: Any = validation.Manifest
    for part in path:
        origin, args = _unwrap(current)
        if isinstance(origin, type) and issubclass(origin, BaseModel):
            field = origin.model_fields.get(str(part))
            if field is None:
                return []
            current = field.annotation
        elif origin in (dict, list) and args:
            current = args[-1]
        else:
            return []
    origin, _ = _unwrap(current)
    if isinstance(origin, type) and issubclass(origin, BaseModel):
        return list(origin.model_fields)
    return []


def _unwrap(annotation: Any) -> tuple[Any, tuple[Any, ...]]:
    """Strip Annotated and Optional; return (origin, type args)."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            options = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = options[0]
        elif origin is None:
            return annotation, ()
        else:
            return origin, typing.get_args(annotation)


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 40 else value[:37] + "...")
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return str(value)
