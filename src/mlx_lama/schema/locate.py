"""Where each key of a TOML document is written: key path -> (line, column).

``tomllib`` gives values but not positions, and every manifest error must
say ``file:line:col``. This scanner walks the text once, following TOML's
lexical rules (comments and the four string forms, lexed by
:mod:`~mlx_lama.schema.tomlscan`; multi-line arrays, inline tables,
array-of-tables indices), and records the position of each key,
table header and array element. It is only run on text tomllib accepted, and
on anything it does not understand it stops and returns what it has. Pure.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import tomllib
from dataclasses import dataclass

from mlx_lama.schema.tomlscan import COMMENT, QUOTES, comment_end, string_end

KeyPath = tuple[str | int, ...]

_BARE_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


@dataclass(frozen=True, slots=True)
class Position:
    line: int  # 1-based
    col: int  # 1-based


class _Stop(Exception):
    """The scanner met something it does not handle; keep what was found."""


def locate_keys(text: str) -> dict[KeyPath, Position]:
    """Map every key path in ``text`` to where it is written. Pure."""
    scanner = _Scanner(text)
    with contextlib.suppress(_Stop, IndexError, tomllib.TOMLDecodeError):
        scanner.document()
    return scanner.found


def nearest_position(found: dict[KeyPath, Position], path: KeyPath) -> Position:
    """The position of ``path``, or of its closest written ancestor, or 1:1."""
    for end in range(len(path), 0, -1):
        position = found.get(path[:end])
        if position is not None:
            return position
    return Position(1, 1)


def render_key_path(path: KeyPath) -> str:
    """``("models", "qwen:7b", "port")`` -> ``models."qwen:7b".port``. Pure."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        bare = bool(part) and all(ch.isalnum() or ch in "_-" for ch in part) and part.isascii()
        text = part if bare else json.dumps(part, ensure_ascii=False)
        out += f".{text}" if out else text
    return out


class _Scanner:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.found: dict[KeyPath, Position] = {}
        self._line_starts = [0] + [n + 1 for n, ch in enumerate(text) if ch == "\n"]
        self._array_tables: dict[KeyPath, int] = {}

    # -- positions ---------------------------------------------------------
    def position(self, index: int) -> Position:
        line = bisect.bisect_right(self._line_starts, index) - 1
        return Position(line + 1, index - self._line_starts[line] + 1)

    def record(self, path: KeyPath, index: int) -> None:
        self.found.setdefault(path, self.position(index))

    # -- low-level lexing ---------------------------------------------------
    def peek(self, ahead: int = 0) -> str:
        j = self.i + ahead
        return self.s[j] if j < len(self.s) else ""

    def skip_blank(self) -> None:
        while self.peek() in (" ", "\t"):
            self.i += 1

    def skip_comment(self) -> None:
        if self.peek() == COMMENT:
            self.i = comment_end(self.s, self.i)

    def skip_blank_lines(self) -> None:
        """Whitespace, newlines and comments (inside arrays, between statements)."""
        while True:
            self.skip_blank()
            self.skip_comment()
            if self.peek() in ("\n", "\r"):
                self.i += 1
                continue
            return

    def string(self) -> str:
        """Read any TOML string at the cursor and return its value."""
        start = self.i
        end = string_end(self.s, start)
        if end is None:
            raise _Stop
        self.i = end
        value = tomllib.loads(f"v = {self.s[start:end]}")["v"]
        if not isinstance(value, str):
            raise _Stop
        return value

    def key(self) -> list[tuple[str, int]]:
        """A dotted key: each part with the index it starts at."""
        parts: list[tuple[str, int]] = []
        while True:
            self.skip_blank()
            start = self.i
            if self.peek() in QUOTES:
                parts.append((self.string(), start))
            else:
                while self.peek() in _BARE_KEY and self.peek():
                    self.i += 1
                if self.i == start:
                    raise _Stop
                parts.append((self.s[start : self.i], start))
            self.skip_blank()
            if self.peek() != ".":
                return parts
            self.i += 1

    # -- grammar ------------------------------------------------------------
    def document(self) -> None:
        table: KeyPath = ()
        while True:
            self.skip_blank_lines()
            if self.i >= len(self.s):
                return
            if self.peek() == "[":
                table = self.header()
            else:
                self.key_value(table)
            self.skip_blank()
            self.skip_comment()

    def header(self) -> KeyPath:
        start = self.i
        is_array = self.s.startswith("[[", self.i)
        self.i += 2 if is_array else 1
        parts = self.key()
        self.i += 2 if is_array else 1
        path: KeyPath = ()
        for name, index in parts:
            path = (*path, name)
            self.record(path, index)
        if is_array:
            count = self._array_tables.get(path, 0)
            self._array_tables[path] = count + 1
            path = (*path, count)
            self.record(path, start)
        return path

    def key_value(self, table: KeyPath) -> None:
        path = table
        for name, index in self.key():
            path = (*path, name)
            self.record(path, index)
        if self.peek() != "=":
            raise _Stop
        self.i += 1
        self.skip_blank()
        self.value(path)

    def value(self, path: KeyPath) -> None:
        ch = self.peek()
        if ch in QUOTES:
            self.string()
        elif ch == "[":
            self.array(path)
        elif ch == "{":
            self.inline_table(path)
        else:
            while self.peek() and self.peek() not in ",]}#\n\r":
                self.i += 1

    def array(self, path: KeyPath) -> None:
        self.i += 1
        index = 0
        while True:
            self.skip_blank_lines()
            if self.peek() == "]":
                self.i += 1
                return
            self.record((*path, index), self.i)
            self.value((*path, index))
            index += 1
            self.skip_blank_lines()
            if self.peek() == ",":
                self.i += 1
            elif self.peek() != "]":
                raise _Stop

    def inline_table(self, path: KeyPath) -> None:
        self.i += 1
        while True:
            self.skip_blank_lines()
            if self.peek() == "}":
                self.i += 1
                return
            self.key_value(path)
            self.skip_blank_lines()
            if self.peek() == ",":
                self.i += 1
