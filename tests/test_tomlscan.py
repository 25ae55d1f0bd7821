"""The one TOML lexer for strings and comments that the locator and the editor share."""

from __future__ import annotations

import tomllib

import pytest

from mlx_lama.schema.tomlscan import comment_end, string_end

# (text, where the string starts, the string as written), for each form of TOML string.
STRINGS = [
    ('"plain" rest', 0, '"plain"'),
    (r'"a \"quoted\" word" rest', 0, r'"a \"quoted\" word"'),
    (r'"ends in a backslash\\" rest', 0, r'"ends in a backslash\\"'),
    ('"" rest', 0, '""'),
    ("'C:\\path\\' rest", 0, "'C:\\path\\'"),
    ("'has \"double\" quotes' rest", 0, "'has \"double\" quotes'"),
    ('"# not a comment" # a comment', 0, '"# not a comment"'),
    ("k = 'a # b' # c", 4, "'a # b'"),
    ('"""first\nsecond""" rest', 0, '"""first\nsecond"""'),
    ('"""a \\""" still in\n""" rest', 0, '"""a \\""" still in\n"""'),
    ('"""two quotes at the end""""" rest', 0, '"""two quotes at the end"""""'),
    ('"""""" rest', 0, '""""""'),
    ("'''no \\''' escapes''' rest", 0, "'''no \\'''"),
    ("'''one quote at the end'''' rest", 0, "'''one quote at the end''''"),
    ("'''line\n# not a comment\n''' rest", 0, "'''line\n# not a comment\n'''"),
]


@pytest.mark.parametrize(("text", "start", "written"), STRINGS)
def test_string_end_finds_the_closing_quotes(text: str, start: int, written: str) -> None:
    end = string_end(text, start)
    assert end is not None
    assert text[start:end] == written
    assert isinstance(tomllib.loads(f"v = {written}")["v"], str)  # a whole TOML string


@pytest.mark.parametrize(
    "text",
    ['"no end', '"line\nend"', "'line\nend'", '"escaped end\\"', '"""never closed""', "'''x''"],
)
def test_string_end_is_none_for_an_unclosed_string(text: str) -> None:
    assert string_end(text, 0) is None


@pytest.mark.parametrize(
    ("text", "start", "comment"),
    [
        ('# a "quoted" comment\nk = 1', 0, '# a "quoted" comment'),
        ("k = 1  # it's here\n", 7, "# it's here"),
        ("# at the end, no newline", 0, "# at the end, no newline"),
        ('# """ opens nothing\n"""x"""', 0, '# """ opens nothing'),
    ],
)
def test_comment_end_stops_at_the_line_end(text: str, start: int, comment: str) -> None:
    assert text[start : comment_end(text, start)] == comment
