"""TOML's lexical rules for strings and comments, shared by every hand-written scanner.

:mod:`~mlx_lama.schema.locate` (key positions for error messages) and
:mod:`~mlx_lama.schema.tomllayout` (table headers for the editor) walk TOML
text themselves; this module is the one place that knows where a string or
a comment ends. Both functions take an index where the construct starts and
return the index just past it. Pure.
"""

from __future__ import annotations

QUOTES = frozenset("\"'")  # a basic string starts with ", a literal string with '
COMMENT = "#"


def string_end(text: str, i: int) -> int | None:
    """Index just past the TOML string (any of the four forms) starting at ``i``,
    or None when it is not closed (a one-line string meeting a line end, or the
    text ending first)."""
    quote, n = text[i], len(text)
    escapes = quote == '"'  # only basic strings have backslash escapes
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
        return None
    j = i + 1
    while j < n and text[j] not in (quote, "\n"):
        j += 2 if escapes and text[j] == "\\" else 1
    return j + 1 if j < n and text[j] == quote else None


def comment_end(text: str, i: int) -> int:
    """Index of the line end that closes the comment starting at ``i`` (or the
    text's end): the comment is ``text[i:comment_end(text, i)]``."""
    end = text.find("\n", i)
    return len(text) if end < 0 else end
