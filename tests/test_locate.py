"""The key locator that gives manifest errors their line and column."""

from __future__ import annotations

import tomllib

from mlx_lama.schema.locate import Position, locate_keys, nearest_position

DOC = '''\
# comment with = and [brackets]
version = 1
[server]
port = 11434  # trailing comment
[aliases]
"coder" = "qwen:7b"
'odd.key' = "x"
[models."qwen:7b"]
repo = "org/name"
system = """first
still a \\""" string
"""
stop = ["a", # inside an array
  "b"]
messages = [{ role = "user", content = "hi" }, { role = "assistant", content = 'x' }]
parameters.top_k = 4
[models."qwen:7b".env]
A = "1"
[[backends.list]]
x = 1
[[backends.list]]
x = 2
'''


def test_fixture_document_is_valid_toml() -> None:
    assert tomllib.loads(DOC)["models"]["qwen:7b"]["parameters"]["top_k"] == 4


def test_positions_of_keys_tables_and_elements() -> None:
    found = locate_keys(DOC)
    expected = {
        ("version",): (2, 1),
        ("server",): (3, 2),
        ("server", "port"): (4, 1),
        ("aliases", "coder"): (6, 1),
        ("aliases", "odd.key"): (7, 1),
        ("models", "qwen:7b"): (8, 9),
        ("models", "qwen:7b", "repo"): (9, 1),
        ("models", "qwen:7b", "system"): (10, 1),
        ("models", "qwen:7b", "stop"): (13, 1),
        ("models", "qwen:7b", "stop", 1): (14, 3),
        ("models", "qwen:7b", "messages", 1, "content"): (15, 70),
        ("models", "qwen:7b", "parameters", "top_k"): (16, 12),
        ("models", "qwen:7b", "env", "A"): (18, 1),
        ("backends", "list", 0, "x"): (20, 1),
        ("backends", "list", 1, "x"): (22, 1),
    }
    for path, (line, col) in expected.items():
        assert found[path] == Position(line, col), path


def test_nearest_position_falls_back_to_the_closest_parent() -> None:
    found = locate_keys(DOC)
    missing = ("models", "qwen:7b", "parameters", "nope")
    assert nearest_position(found, missing) == Position(16, 1)
    assert nearest_position(found, ("nothing",)) == Position(1, 1)


def test_unreadable_text_returns_what_was_found() -> None:
    found = locate_keys('a = 1\nb = "unterminated\n')
    assert found[("a",)] == Position(1, 1)
