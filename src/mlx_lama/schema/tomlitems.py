"""tomlkit values of a manifest: find a model's tables, set and delete keys in place.

The editor changes values through tomlkit so that comments, key order, blank
lines and quoting stay as the user wrote them. This module holds those steps:
plain Python values turned into TOML items, a key added after a table's last
key (before the comments that lead to the next table), a sub-table synced in
place, and a new model table rendered on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import tomlkit
from tomlkit.container import Container, OutOfOrderTableProxy
from tomlkit.items import AoT, InlineTable, Item, KeyType, Null, SingleKey, Table

Entry = Table | InlineTable


def name_key(name: str, quoted: bool) -> SingleKey:
    """A key for ``name``: quoted when needed, or always when the file quotes its names."""
    return SingleKey(name, KeyType.Basic if quoted else None)


def keys_quoted(table: Entry) -> bool | None:
    """Whether every key of ``table`` is quoted; None when it has no keys."""
    styles = [k.t != KeyType.Bare for k, _ in table.value.body if isinstance(k, SingleKey)]
    return all(styles) if styles else None


def model_entries(doc: tomlkit.TOMLDocument, key: str) -> list[Entry]:
    """Every table that holds part of model ``key`` (more than one when its
    sub-tables are written apart from it)."""
    found: list[Entry] = []
    for section in _children(doc, "models"):
        if isinstance(section, Table | InlineTable):
            found += [
                e for e in _children(section.value, key) if isinstance(e, Table | InlineTable)
            ]
    return found


def set_field(entries: list[Entry], field: str, value: object | None) -> None:
    """Set ``field`` in the first of ``entries`` that has it (None deletes it from
    all), or add it after the last plain key of the first entry with one."""
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
            holders[0][field] = value_item(value)
        return
    plain = [entry for entry in entries if _last_plain_key(entry) is not None]
    insert_key((plain or entries)[0], field, value_item(value))


def insert_key(table: Entry | OutOfOrderTableProxy, key: str | SingleKey, item: Item) -> None:
    """Add ``key`` after the table's last key/value, so it lands before the comments
    and blank lines that lead to the next table (tomlkit would append after them)."""
    if not isinstance(table, Table):
        table[key] = item
        return
    container = table.value
    last = _last_plain_key(table)
    if last is not None:
        item.trivia.indent = last[1].trivia.indent
        # Right after it (tomlkit 0.15 dropped _insert_after; _insert_at is in both).
        after = 1 + max(i for i, (k, _) in enumerate(container.body) if k is last[0])
        if after == len(container.body):
            table.append(key, item)
        else:
            container._insert_at(after, key, item)
        return
    first = next((i for i, (_, v) in enumerate(container.body) if not isinstance(v, Null)), None)
    if first is None:
        if "\n" not in table.trivia.trail:
            table.trivia.trail += "\n"
        table.append(key, item)
    else:
        container._insert_at(first, key, item)


def delete_aliases(doc: tomlkit.TOMLDocument, keys: Iterable[str]) -> None:
    """Delete ``keys`` from the ``[aliases]`` table."""
    table = doc["aliases"]
    assert isinstance(table, Table | InlineTable | OutOfOrderTableProxy)
    for key in keys:
        del table[key]


def value_item(value: object) -> Item:
    """A TOML value: mappings become inline tables, lists arrays of such values."""
    if isinstance(value, Mapping):
        inline = tomlkit.inline_table()
        for k, v in value.items():
            if v is not None:
                inline.append(str(k), value_item(v))
        return inline
    if isinstance(value, list | tuple):
        array = tomlkit.array()
        for v in value:
            array.append(value_item(v))
        return array
    if isinstance(value, Item):
        return value
    if isinstance(value, str | int | float):  # bool is an int
        return tomlkit.item(value)
    raise TypeError(f"cannot write a {type(value).__name__} to the manifest")


def model_snippet(name: SingleKey, fields: Mapping[str, object]) -> str:
    """``[models."name"]`` and its sub-tables, rendered on their own."""
    models = tomlkit.table(is_super_table=True)
    models.append(name, _table(fields))
    doc = tomlkit.document()
    doc.append("models", models)
    return doc.as_string()


def _children(container: Container, key: str) -> list[Item]:
    return [item for k, item in container.body if k is not None and k.key == key]


def _sync_table(table: Table, values: Mapping[Any, object]) -> None:
    """Make sub-table ``table`` hold exactly ``values``, editing it in place."""
    for key in [k for k in table if k not in values or values[k] is None]:
        del table[key]
    for key, value in values.items():
        if value is None:
            continue
        if key in table:
            table[key] = value_item(value)
        else:
            insert_key(table, str(key), value_item(value))


def _last_plain_key(table: Entry) -> tuple[Any, Item] | None:
    last = None
    for k, item in table.value.body:
        if k is not None and not isinstance(item, Table | AoT):
            last = (k, item)
    return last


def _table(values: Mapping[Any, object]) -> Table:
    table = tomlkit.table()
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, Mapping) and value:
            table.append(str(key), _table(value))
        else:
            table.append(str(key), value_item(value))
    return table
