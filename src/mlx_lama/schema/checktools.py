"""What the manifest's cross-entry checks share: the report callback, "did you mean",
and reading raw TOML tables that may hold values of the wrong type."""

from __future__ import annotations

import difflib
import typing
from collections.abc import Iterator, Mapping
from typing import Any

from mlx_lama.schema.locate import KeyPath


def closest(word: object, options: list[str] | tuple[str, ...]) -> str | None:
    """A "did you mean" hint for ``word`` among ``options``, if one is close."""
    if not isinstance(word, str):
        return None
    matches = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"did you mean {matches[0]!r}?" if matches else None


class Report(typing.Protocol):
    def __call__(self, path: KeyPath, message: str, hint: str | None = None) -> None: ...


def tables(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def items(table: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, entry in table.items():
        yield name, entry if isinstance(entry, dict) else {}
