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

Where tables go (a new ``[models."x"]`` after the last model, a new
``[aliases]`` before the first model) and what goes with a removed table is
decided on lines, with the comment block directly above a header (after a
blank line) treated as part of that header; values are changed with tomlkit.
"""

from __future__ import annotations

import re
import stat
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.container import Container, OutOfOrderTableProxy
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import AoT, InlineTable, Item, KeyType, Null, SingleKey, Table

from mlx_lama.atomic import atomic_write_text
from mlx_lama.errors import ManifestError, MlxLamaError, Problem
from mlx_lama.filelock import apply_lock
from mlx_lama.names import canonical_name, check_model_name
from mlx_lama.schema import memo
from mlx_lama.schema.loader import BOM, decode_manifest, parse_manifest
from mlx_lama.schema.manifest import Manifest

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
        if text == original:  # nothing to write (a missing file stays missing)
            return parse_manifest(original, str(path))
        manifest = parse_manifest(text, str(path))
        target = path.resolve()  # write through a symlink instead of replacing it
        atomic_write_text(target, bom + text)
        if mode is not None:
            target.chmod(mode)  # the temporary file atomic_write_text replaces it with is 0600
        memo.remember(path, (bom + text).encode("utf-8"), manifest)
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
        layout = _Layout.of(text)
        last = [k for k, h in enumerate(layout.headers) if h.path[:1] == ("models",)]
        if last:
            k = last[-1]
            at = layout.content_end(layout.headers[k].line, layout.region_end(k))
        else:
            at = layout.content_end(0, len(layout.lines))
        return layout.insert(at, _model_snippet(_key(name, _models_quoted(layout)), fields))

    return _edit(path, transform)


def set_model_fields(path: Path, name: str, fields: Mapping[str, object | None]) -> Manifest:
    """Set keys of an existing model (None deletes the key), keeping its other keys,
    comments and order. A mapping value replaces the whole value (a sub-table keeps
    its place and the comments of the keys that stay)."""
    _check_name(name)

    def transform(text: str, raw: dict[str, Any]) -> str:
        key = _model_key(raw, name, path)
        doc = tomlkit.parse(text)
        entries = _model_entries(doc, key)
        if not entries:
            raise ManifestEditError(
                f"model {key!r} in {path} is not written as a table the editor can change",
                hint=f'write it as a [models."{key}"] table, or edit it by hand',
            )
        for field, value in fields.items():
            _set_field(entries, field, value)
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
        layout = _Layout.of(text)
        text = layout.drop(lambda p: len(p) >= 2 and p[:2] == ("models", key))
        doc = tomlkit.parse(text)
        models = doc.get("models")
        if isinstance(models, Table | InlineTable | OutOfOrderTableProxy) and key in models:
            del models[key]  # written inline or with dotted keys: no header of its own
        if doomed:
            _delete_aliases(doc, doomed)
        text = doc.as_string()
        if doomed and len(doomed) == len(aliases):
            text = _drop_empty_aliases(text)
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
        layout = _Layout.of(text)
        quoted = _models_quoted(layout)
        if existing is not None and isinstance(table, Table | InlineTable | OutOfOrderTableProxy):
            if table[existing] != stored:
                table[existing] = stored  # in place: its comment stays
            return doc.as_string()
        if isinstance(table, Table | InlineTable) and (style := _keys_quoted(table)) is not None:
            quoted = style  # follow the aliases already there
        if isinstance(table, Table | InlineTable | OutOfOrderTableProxy):
            _insert_key(table, _key(alias, quoted), tomlkit.item(stored))
            return doc.as_string()
        first = [k for k, h in enumerate(layout.headers) if h.path[:1] == ("models",)]
        # Before the first model's table (and its comment block), else at the end.
        at = layout.block_start(first[0]) if first else layout.content_end(0, len(layout.lines))
        line = tomlkit.document()
        line.append(_key(alias, quoted), tomlkit.item(stored))
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
        _delete_aliases(doc, [key])
        text = doc.as_string()
        return _drop_empty_aliases(text) if len(aliases) == 1 else text

    return _edit(path, transform)


# -- helpers: names and raw data --------------------------------------------------


def _check_name(name: str) -> None:
    problem = check_model_name(name)
    if problem is not None:
        raise ManifestEditError(problem, hint=_NAME_HINT)


def _key(name: str, quoted: bool) -> SingleKey:
    """A key for ``name``: quoted when needed, or always when the file quotes its names."""
    return SingleKey(name, KeyType.Basic if quoted else None)


def _keys_quoted(table: _Entry) -> bool | None:
    """Whether every key of ``table`` is quoted; None when it has no keys."""
    styles = [k.t != KeyType.Bare for k, _ in table.value.body if isinstance(k, SingleKey)]
    return all(styles) if styles else None


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


# -- helpers: tomlkit values -------------------------------------------------------

_Entry = Table | InlineTable


def _children(container: Container, key: str) -> list[Item]:
    return [item for k, item in container.body if k is not None and k.key == key]


def _model_entries(doc: tomlkit.TOMLDocument, key: str) -> list[_Entry]:
    """Every table that holds part of model ``key`` (more than one when its
    sub-tables are written apart from it)."""
    found: list[_Entry] = []
    for section in _children(doc, "models"):
        if isinstance(section, Table | InlineTable):
            found += [
                e for e in _children(section.value, key) if isinstance(e, Table | InlineTable)
            ]
    return found


def _set_field(entries: list[_Entry], field: str, value: object | None) -> None:
    holders = [entry for entry in entries if field in entry]
    if value is None:
        for entry in holders:
            del entry[field]
        return
    if holders:
        current = holders[0][field]
        if isinstance(value, Mapping) and isinstance(current, Table):
            _sync_table(current, value)
        else:
            holders[0][field] = _value_item(value)
        return
    plain = [entry for entry in entries if _last_plain_key(entry) is not None]
    _insert_key((plain or entries)[0], field, _value_item(value))


def _sync_table(table: Table, values: Mapping[Any, object]) -> None:
    """Make sub-table ``table`` hold exactly ``values``, editing it in place."""
    for key in [k for k in table if k not in values or values[k] is None]:
        del table[key]
    for key, value in values.items():
        if value is None:
            continue
        if key in table:
            table[key] = _value_item(value)
        else:
            _insert_key(table, str(key), _value_item(value))


def _last_plain_key(table: _Entry) -> tuple[Any, Item] | None:
    last = None
    for k, item in table.value.body:
        if k is not None and not isinstance(item, Table | AoT):
            last = (k, item)
    return last


def _insert_key(table: _Entry | OutOfOrderTableProxy, key: str | SingleKey, item: Item) -> None:
    """Add ``key`` after the table's last key/value, so it lands before the comments
    and blank lines that lead to the next table (tomlkit would append after them)."""
    if not isinstance(table, Table):
        table[key] = item
        return
    container = table.value
    last = _last_plain_key(table)
    if last is not None:
        item.trivia.indent = last[1].trivia.indent
        container._insert_after(last[0], key, item)
        return
    first = next((i for i, (_, v) in enumerate(container.body) if not isinstance(v, Null)), None)
    if first is None:
        if "\n" not in table.trivia.trail:
            table.trivia.trail += "\n"
        table.append(key, item)
    else:
        container._insert_at(first, key, item)


def _delete_aliases(doc: tomlkit.TOMLDocument, keys: Iterable[str]) -> None:
    table = doc["aliases"]
    assert isinstance(table, Table | InlineTable | OutOfOrderTableProxy)
    for key in keys:
        del table[key]


def _value_item(value: object) -> Item:
    """A TOML value: mappings become inline tables, lists arrays of such values."""
    if isinstance(value, Mapping):
        inline = tomlkit.inline_table()
        for k, v in value.items():
            if v is not None:
                inline.append(str(k), _value_item(v))
        return inline
    if isinstance(value, list | tuple):
        array = tomlkit.array()
        for v in value:
            array.append(_value_item(v))
        return array
    if isinstance(value, Item):
        return value
    if isinstance(value, str | int | float):  # bool is an int
        return tomlkit.item(value)
    raise TypeError(f"cannot write a {type(value).__name__} to the manifest")


def _table(values: Mapping[Any, object]) -> Table:
    table = tomlkit.table()
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, Mapping) and value:
            table.append(str(key), _table(value))
        else:
            table.append(str(key), _value_item(value))
    return table


def _model_snippet(name: SingleKey, fields: Mapping[str, object]) -> str:
    """``[models."name"]`` and its sub-tables, rendered on their own."""
    models = tomlkit.table(is_super_table=True)
    models.append(name, _table(fields))
    doc = tomlkit.document()
    doc.append("models", models)
    return doc.as_string()


# -- helpers: lines and table headers ------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Header:
    line: int  # 0-based
    path: tuple[str, ...]
    commented: bool  # a comment follows the header on its line


@dataclass(frozen=True, slots=True)
class _Layout:
    """A TOML text as lines, with its table headers and which lines hold more than
    whitespace and comments (strings and arrays may span lines)."""

    lines: list[str]
    headers: list[_Header]
    code: frozenset[int]

    @classmethod
    def of(cls, text: str) -> _Layout:
        headers, code = _scan(text)
        parts = text.split("\n")
        lines = [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
        return cls(lines, headers, frozenset(code))

    def blank(self, i: int) -> bool:
        return i not in self.code and not self.lines[i].strip()

    def comment(self, i: int) -> bool:
        return i not in self.code and self.lines[i].lstrip().startswith("#")

    def block_start(self, k: int) -> int:
        """First line of header ``k`` with the comment block directly above it
        (a block that follows a blank line; otherwise it belongs to what is above)."""
        header = self.headers[k].line
        i = header
        while i > 0 and self.comment(i - 1):
            i -= 1
        return i if 0 < i < header and self.blank(i - 1) else header

    def region_end(self, k: int) -> int:
        """Where what belongs to header ``k`` ends: the next header's block, or EOF."""
        return self.block_start(k + 1) if k + 1 < len(self.headers) else len(self.lines)

    def content_end(self, start: int, stop: int) -> int:
        while stop > start and self.blank(stop - 1):
            stop -= 1
        return stop

    def insert(self, at: int, snippet: str) -> str:
        """The text with ``snippet`` (whole lines) at line ``at``, one blank line
        between it and the content on either side."""
        before = "".join(self.lines[:at])
        if before and not before.endswith("\n"):
            before += "\n"
        if at > 0 and not self.blank(at - 1):
            before += "\n"
        rest = self.lines[at:]
        if any(line.strip() for line in rest) and not self.blank(at):
            snippet += "\n"
        return before + snippet + "".join(rest)

    def drop(self, doomed: Callable[[tuple[str, ...]], bool]) -> str:
        """The text without the headers ``doomed`` picks, each with its comment block,
        body and the blank lines after it."""
        keep = [True] * len(self.lines)
        for k, header in enumerate(self.headers):
            if doomed(header.path):
                for i in range(self.block_start(k), self.region_end(k)):
                    keep[i] = False
        return "".join(line for line, kept in zip(self.lines, keep, strict=True) if kept)


def _models_quoted(layout: _Layout) -> bool:
    """Whether every ``[models.NAME]`` header quotes NAME (as the example file does)."""
    styles = [
        bool(re.match(r"\s*\[\s*models\s*\.\s*[\"']", layout.lines[h.line]))
        for h in layout.headers
        if len(h.path) >= 2 and h.path[0] == "models"
    ]
    return bool(styles) and all(styles)


def _drop_empty_aliases(text: str) -> str:
    """Remove an ``[aliases]`` header left with nothing under it and no comments."""
    layout = _Layout.of(text)
    for k, header in enumerate(layout.headers):
        if header.path != ("aliases",):
            continue
        body = range(header.line + 1, layout.region_end(k))
        if (
            header.commented
            or layout.block_start(k) != header.line
            or not all(layout.blank(i) for i in body)
        ):
            return text
        return layout.drop(lambda p: p == ("aliases",))
    return text


def _scan(text: str) -> tuple[list[_Header], set[int]]:
    """Table headers and the lines holding code, for text TOML parsers accept."""
    headers: list[_Header] = []
    code: set[int] = set()
    i, n, line, depth = 0, len(text), 0, 0
    statement_start = True
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
            i += 1
            statement_start = True
            continue
        if ch in " \t\r":
            i += 1
            continue
        if ch == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        code.add(line)
        if ch == "[" and depth == 0 and statement_start:
            end = _header_end(text, i)
            eol = text.find("\n", end)
            rest = text[end : n if eol < 0 else eol]
            headers.append(_Header(line, _header_path(text[i:end]), "#" in rest))
            i = end
            statement_start = False
            continue
        statement_start = False
        if ch in "\"'":
            end = _string_end(text, i)
            spanned = text.count("\n", i, end)
            code.update(range(line, line + spanned + 1))
            line += spanned
            i = end
            continue
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth = max(0, depth - 1)
        i += 1
    return headers, code


def _string_end(text: str, i: int) -> int:
    """Index just past the TOML string (any of the four forms) starting at ``i``."""
    quote, n = text[i], len(text)
    escapes = quote == '"'
    if text.startswith(quote * 3, i):
        j = i + 3
        while j < n:
            if escapes and text[j] == "\\":
                j += 2
            elif text.startswith(quote * 3, j):
                end = j + 3
                while end < n and text[end] == quote and end - j < 5:
                    end += 1  # up to two quotes may end the content
                return end
            else:
                j += 1
        return n
    j = i + 1
    while j < n and text[j] not in (quote, "\n"):
        j += 2 if escapes and text[j] == "\\" else 1
    return min(j + 1, n)


def _header_end(text: str, i: int) -> int:
    """Index just past the ``]`` or ``]]`` closing the header at ``i``."""
    n = len(text)
    array = text.startswith("[[", i)
    j = i + (2 if array else 1)
    while j < n and text[j] not in "]\n":
        j = _string_end(text, j) if text[j] in "\"'" else j + 1
    j += 2 if array and text.startswith("]]", j) else 1
    return min(j, n)


def _header_path(header: str) -> tuple[str, ...]:
    try:
        node: object = tomllib.loads(header + "\n")
    except tomllib.TOMLDecodeError:
        return ()
    path: list[str] = []
    while isinstance(node, dict) and len(node) == 1:
        ((key, node),) = node.items()
        path.append(key)
        if isinstance(node, list):
            node = node[-1] if node else {}
    return tuple(path)
