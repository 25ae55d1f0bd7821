"""A TOML text as lines: its table headers, comment blocks and blank lines.

The editor decides on lines where a table goes and what goes with a removed
one: a new ``[models."x"]`` after the last model, a new ``[aliases]`` before
the first model, and the comment block directly above a header (after a blank
line) treated as part of that header. :class:`Layout` finds the headers and
which lines hold code (strings and arrays may span lines), and inserts or drops
whole lines. Strings and comments are lexed by :mod:`~mlx_lama.schema.tomlscan`.
Pure; only run on text TOML parsers accept.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass

from mlx_lama.schema.tomlscan import COMMENT, QUOTES, comment_end, string_end


@dataclass(frozen=True, slots=True)
class Header:
    line: int  # 0-based
    path: tuple[str, ...]
    commented: bool  # a comment follows the header on its line


@dataclass(frozen=True, slots=True)
class Layout:
    """A TOML text as lines, with its table headers and which lines hold more than
    whitespace and comments (strings and arrays may span lines)."""

    lines: list[str]
    headers: list[Header]
    code: frozenset[int]

    @classmethod
    def of(cls, text: str) -> Layout:
        headers, code = _scan(text)
        parts = text.split("\n")
        lines = [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
        return cls(lines, headers, frozenset(code))

    def blank(self, i: int) -> bool:
        return i not in self.code and not self.lines[i].strip()

    def comment(self, i: int) -> bool:
        return i not in self.code and self.lines[i].lstrip().startswith(COMMENT)

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


def models_quoted(layout: Layout) -> bool:
    """Whether every ``[models.NAME]`` header quotes NAME (as the example file does)."""
    styles = [
        bool(re.match(r"\s*\[\s*models\s*\.\s*[\"']", layout.lines[h.line]))
        for h in layout.headers
        if len(h.path) >= 2 and h.path[0] == "models"
    ]
    return bool(styles) and all(styles)


def drop_empty_aliases(text: str) -> str:
    """Remove an ``[aliases]`` header left with nothing under it and no comments."""
    layout = Layout.of(text)
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


def _scan(text: str) -> tuple[list[Header], set[int]]:
    """Table headers and the lines holding code, for text TOML parsers accept."""
    headers: list[Header] = []
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
        if ch == COMMENT:
            i = comment_end(text, i)
            continue
        code.add(line)
        if ch == "[" and depth == 0 and statement_start:
            end = _header_end(text, i)
            eol = text.find("\n", end)
            rest = text[end : n if eol < 0 else eol]
            headers.append(Header(line, _header_path(text[i:end]), COMMENT in rest))
            i = end
            statement_start = False
            continue
        statement_start = False
        if ch in QUOTES:
            end = _past_string(text, i)
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


def _past_string(text: str, i: int) -> int:
    """Index just past the string at ``i``; the text's end when it is not closed."""
    end = string_end(text, i)
    return len(text) if end is None else end


def _header_end(text: str, i: int) -> int:
    """Index just past the ``]`` or ``]]`` closing the header at ``i``."""
    n = len(text)
    array = text.startswith("[[", i)
    j = i + (2 if array else 1)
    while j < n and text[j] not in "]\n":
        j = _past_string(text, j) if text[j] in QUOTES else j + 1
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
