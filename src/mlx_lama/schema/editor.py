"""Change ``mlxlama.toml`` the way a person would: one entry at a time, comments kept.

The gateway's ``/api/pull``, ``/api/copy`` and ``/api/delete`` and the CLI verbs
that change the manifest (``pull``, ``rm``, ``cp``, ``serve MODEL``, ``stop``)
go through here. Every edit runs under the apply lock, reads the file, changes
it with tomlkit (so comments, key order, blank lines and quoting stay as the
user wrote them), validates the result with the loader and only then replaces
the file atomically. An edit that would leave an invalid manifest raises and
leaves the file untouched.

This module only edits the file: it never applies the manifest, never pulls
models and never starts, stops or contacts a server. Callers do that
afterwards if they want to.

Here are the verbs (add, change and remove a model; set and remove an alias)
and their checks on names. Where tables go and what goes with a removed table
is decided on lines by :mod:`~mlx_lama.schema.tomllayout`; values are changed
with tomlkit by :mod:`~mlx_lama.schema.tomlitems`.
"""

from __future__ import annotations

import re
import stat
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.container import OutOfOrderTableProxy
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import InlineTable, Table

from mlx_lama.atomic import atomic_write_text
from mlx_lama.config import user_defaults
from mlx_lama.errors import ManifestError, MlxLamaError, Problem
from mlx_lama.filelock import apply_lock
from mlx_lama.names import canonical_name, check_model_name
from mlx_lama.schema import memo
from mlx_lama.schema.loader import BOM, decode_manifest, memo_context, parse_manifest
from mlx_lama.schema.manifest import Manifest
from mlx_lama.schema.tomlitems import (
    delete_aliases,
    insert_key,
    keys_quoted,
    model_entries,
    model_snippet,
    name_key,
    set_field,
)
from mlx_lama.schema.tomllayout import Layout, drop_empty_aliases, models_quoted

NEW_MANIFEST = "version = 1\n"
_NAME_HINT = 'names look like "name:tag" or "org/repo"'
_LIST_HINT = "check the name with `mlx-lama list`"


class ManifestEditError(MlxLamaError):
    """The requested edit cannot be made (unknown model, name taken, ...)."""


# -- lookups -------------------------------------------------------------------


def find_model_key(manifest: Manifest, name: str) -> str | None:
    """The manifest's own key for model ``name``, matched as Ollama matches:
    case-insensitive, ``:latest`` implied. None when there is none. Pure."""
    return _match(manifest.models, name)


def find_alias_key(manifest: Manifest, name: str) -> str | None:
    """The manifest's own key for alias ``name`` in ``[aliases]``, matched like
    :func:`find_model_key`. Pure."""
    return _match(manifest.aliases, name)


def _canonical(name: str) -> str | None:
    return canonical_name(name) if check_model_name(name) is None else None


def _match(keys: Iterable[str], name: str) -> str | None:
    wanted = _canonical(name)
    if wanted is None:
        return None
    for key in keys:
        if key == name or _canonical(key) == wanted:
            return key
    return None


# -- the edit itself -------------------------------------------------------------

# An edit step: the current text and its raw TOML data in, the new text out.
_Transform = Callable[[str, dict[str, Any]], str]


def edit_manifest(path: Path, change: Callable[[tomlkit.TOMLDocument], None]) -> Manifest:
    """Apply ``change`` to the manifest at ``path`` as a tomlkit document.

    Under the apply lock: read (a missing file starts as ``version = 1``),
    change, validate, and write only when the text changed and the result is a
    valid manifest. Returns the validated manifest; raises the loader's
    :class:`ManifestError` (file untouched) when the file or the result is invalid.
    """

    def transform(text: str, raw: dict[str, Any]) -> str:
        doc = tomlkit.parse(text)
        change(doc)
        return doc.as_string()

    return _edit(path, transform)


def _edit(path: Path, transform: _Transform) -> Manifest:
    with apply_lock():
        original, bom, mode = _read(path)
        try:
            raw = tomllib.loads(original)
            tomlkit.parse(original)
        except (TOMLKitError, ValueError) as exc:  # tomllib's error is a ValueError
            parse_manifest(original, str(path))  # raises with the loader's file:line message
            problem = Problem(str(path), 1, 1, "", f"TOML the editor cannot read: {exc}")
            raise ManifestError(path, [problem]) from None
        text = transform(original, raw)
        if text != original:
            text = _keep_style(text, original)
        user = user_defaults()
        if text == original:  # nothing to write (a missing file stays missing)
            return parse_manifest(original, str(path), user=user)
        manifest = parse_manifest(text, str(path), user=user)
        target = path.resolve()  # write through a symlink instead of replacing it
        atomic_write_text(target, bom + text)
        if mode is not None:
            target.chmod(mode)  # the temporary file atomic_write_text replaces it with is 0600
        memo.remember(path, (bom + text).encode("utf-8"), manifest, memo_context(user))
        return manifest


def _read(path: Path) -> tuple[str, str, int | None]:
    """The text, the byte-order mark it started with, and its permission bits."""
    try:
        raw = path.read_bytes()
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return NEW_MANIFEST, "", None
    except IsADirectoryError:
        raise ManifestEditError(
            f"{path} is a folder, not a manifest", hint="name the mlxlama.toml file inside it"
        ) from None
    text = decode_manifest(raw, path)
    bom = BOM if text.startswith(BOM) else ""
    return text.removeprefix(bom), bom, mode


def _keep_style(text: str, original: str) -> str:
    """Keep the original's line endings and how it ends (tomlkit writes ``\\n``)."""
    if original.strip():
        ending = original[len(original.rstrip("\r\n")) :]
        text = text.rstrip("\r\n") + ending
    if "\r\n" in original and original.count("\r\n") == original.count("\n"):
        text = re.sub(r"(?<!\r)\n", "\r\n", text)
    return text


# -- models --------------------------------------------------------------------


def add_model(path: Path, name: str, fields: Mapping[str, object]) -> Manifest:
    """Add ``[models."name"]`` with ``fields`` in order (mappings become sub-tables),
    after the last model table. ManifestEditError when the name is taken."""
    _check_name(name)

    def transform(text: str, raw: dict[str, Any]) -> str:
        models, aliases = _raw_names(raw)
        if (taken := _match(models, name)) is not None:
            raise ManifestEditError(
                f"model {name!r} is already in {path}" + _spelled(taken, name),
                hint="choose another name, or remove it first with `mlx-lama rm`",
            )
        if (alias := _match(aliases, name)) is not None:
            raise ManifestEditError(
                f"{name!r} is already an alias of {aliases[alias]!r} in {path}",
                hint="choose another name, or remove the alias first",
            )
        if isinstance(tomlkit.parse(text).get("models"), InlineTable):
            raise ManifestEditError(
                f"{path} writes models as an inline table",
                hint='rewrite it as [models."NAME"] tables, then try again',
            )
        layout = Layout.of(text)
        last = [k for k, h in enumerate(layout.headers) if h.path[:1] == ("models",)]
        if last:
            k = last[-1]
            at = layout.content_end(layout.headers[k].line, layout.region_end(k))
        else:
            at = layout.content_end(0, len(layout.lines))
        return layout.insert(at, model_snippet(name_key(name, models_quoted(layout)), fields))

    return _edit(path, transform)


def set_model_fields(path: Path, name: str, fields: Mapping[str, object | None]) -> Manifest:
    """Set keys of an existing model (None deletes the key), keeping its other keys,
    comments and order. A mapping value replaces the whole value (a sub-table keeps
    its place and the comments of the keys that stay)."""
    _check_name(name)

    def transform(text: str, raw: dict[str, Any]) -> str:
        key = _model_key(raw, name, path)
        doc = tomlkit.parse(text)
        entries = model_entries(doc, key)
        if not entries:
            raise ManifestEditError(
                f"model {key!r} in {path} is not written as a table the editor can change",
                hint=f'write it as a [models."{key}"] table, or edit it by hand',
            )
        for field, value in fields.items():
            set_field(entries, field, value)
        return doc.as_string()

    return _edit(path, transform)


def remove_model(path: Path, name: str) -> tuple[Manifest, tuple[str, ...]]:
    """Delete a model's table (with its sub-tables and the comment block directly
    above it) and every alias that leads to it, directly or through other aliases.
    Returns the new manifest and the removed alias names, sorted."""
    _check_name(name)
    removed: list[str] = []

    def transform(text: str, raw: dict[str, Any]) -> str:
        key = _model_key(raw, name, path)
        _, aliases = _raw_names(raw)
        doomed = _aliases_leading_to(key, aliases)
        layout = Layout.of(text)
        text = layout.drop(lambda p: len(p) >= 2 and p[:2] == ("models", key))
        doc = tomlkit.parse(text)
        models = doc.get("models")
        if isinstance(models, Table | InlineTable | OutOfOrderTableProxy) and key in models:
            del models[key]  # written inline or with dotted keys: no header of its own
        if doomed:
            delete_aliases(doc, doomed)
        text = doc.as_string()
        if doomed and len(doomed) == len(aliases):
            text = drop_empty_aliases(text)
        removed[:] = sorted(doomed)
        return text

    manifest = _edit(path, transform)
    return manifest, tuple(removed)


# -- aliases -------------------------------------------------------------------


def set_alias(path: Path, alias: str, target: str) -> Manifest:
    """Set ``[aliases] alias = target`` (creating the table before the first model
    if needed). ``target`` must be a model or alias of the manifest; an existing
    alias of that name is overwritten."""
    _check_name(alias)
    _check_name(target)

    def transform(text: str, raw: dict[str, Any]) -> str:
        models, aliases = _raw_names(raw)
        if (model := _match(models, alias)) is not None:
            raise ManifestEditError(
                f"{alias!r} is already the name of model {model!r} in {path}",
                hint="choose another alias name; the model's own name works as it is",
            )
        stored = _match(models, target) or _match(aliases, target)
        if stored is None:
            raise ManifestEditError(
                f"alias target {target!r} is not a model or alias in {path}",
                hint=f"pull it first with `mlx-lama pull {target}`, or {_LIST_HINT}",
            )
        existing = _match(aliases, alias)
        if _canonical(alias) in _alias_chain(stored, aliases):
            raise ManifestEditError(
                f"alias {alias!r} -> {stored!r} would make an alias loop",
                hint="point the alias at a model",
            )
        doc = tomlkit.parse(text)
        table = doc.get("aliases")
        layout = Layout.of(text)
        quoted = models_quoted(layout)
        if existing is not None and isinstance(table, Table | InlineTable | OutOfOrderTableProxy):
            if table[existing] != stored:
                table[existing] = stored  # in place: its comment stays
            return doc.as_string()
        if isinstance(table, Table | InlineTable) and (style := keys_quoted(table)) is not None:
            quoted = style  # follow the aliases already there
        if isinstance(table, Table | InlineTable | OutOfOrderTableProxy):
            insert_key(table, name_key(alias, quoted), tomlkit.item(stored))
            return doc.as_string()
        first = [k for k, h in enumerate(layout.headers) if h.path[:1] == ("models",)]
        # Before the first model's table (and its comment block), else at the end.
        at = layout.block_start(first[0]) if first else layout.content_end(0, len(layout.lines))
        line = tomlkit.document()
        line.append(name_key(alias, quoted), tomlkit.item(stored))
        return layout.insert(at, "[aliases]\n" + line.as_string())

    return _edit(path, transform)


def remove_alias(path: Path, alias: str) -> Manifest:
    """Delete ``alias`` from ``[aliases]``; ManifestEditError when there is no such alias."""
    _check_name(alias)

    def transform(text: str, raw: dict[str, Any]) -> str:
        models, aliases = _raw_names(raw)
        key = _match(aliases, alias)
        if key is None:
            hint = _LIST_HINT
            if _match(models, alias) is not None:
                hint = f"{alias!r} is a model, not an alias; remove it with `mlx-lama rm`"
            raise ManifestEditError(f"no alias {alias!r} in {path}", hint=hint)
        doc = tomlkit.parse(text)
        delete_aliases(doc, [key])
        text = doc.as_string()
        return drop_empty_aliases(text) if len(aliases) == 1 else text

    return _edit(path, transform)


# -- helpers: names and raw data --------------------------------------------------


def _check_name(name: str) -> None:
    problem = check_model_name(name)
    if problem is not None:
        raise ManifestEditError(problem, hint=_NAME_HINT)


def _spelled(key: str, name: str) -> str:
    return f" (as {key!r})" if key != name else ""


def _raw_names(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Model entries and string-valued aliases of raw TOML data (tolerates bad types)."""
    models = raw.get("models")
    aliases = raw.get("aliases")
    return (
        models if isinstance(models, dict) else {},
        {k: v for k, v in aliases.items() if isinstance(v, str)}
        if isinstance(aliases, dict)
        else {},
    )


def _model_key(raw: dict[str, Any], name: str, path: Path) -> str:
    models, aliases = _raw_names(raw)
    key = _match(models, name)
    if key is not None:
        return key
    alias = _match(aliases, name)
    if alias is not None:
        target = aliases[alias]
        raise ManifestEditError(
            f"{name!r} is an alias of {target!r} in {path}, not a model",
            hint=f"name the model {target!r}, or change the alias instead",
        )
    raise ManifestEditError(
        f"no model {name!r} in {path}",
        hint=f"add it with `mlx-lama pull {name}`, or {_LIST_HINT}",
    )


def _alias_chain(start: str, aliases: Mapping[str, str]) -> list[str | None]:
    """Canonical names met following aliases from ``start`` (loops end the walk)."""
    by_key = {_canonical(k): v for k, v in aliases.items()}
    chain: list[str | None] = []
    node = _canonical(start)
    while node in by_key and node not in chain:
        chain.append(node)
        node = _canonical(by_key[node])
    return chain


def _aliases_leading_to(model: str, aliases: Mapping[str, str]) -> list[str]:
    """Alias keys that resolve to ``model``, directly or through other aliases."""
    gone = {_canonical(model)}
    doomed: list[str] = []
    grew = True
    while grew:
        grew = False
        for alias, target in aliases.items():
            if alias not in doomed and _canonical(target) in gone:
                doomed.append(alias)
                gone.add(_canonical(alias))
                grew = True
    return doomed
