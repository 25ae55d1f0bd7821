"""Model-name rules: Ollama's name:tag form or a Hugging Face repo id, nothing path-like."""

from __future__ import annotations

import pytest

from mlx_lama.names import (
    InvalidNameError,
    canonical_name,
    check_model_name,
    is_repo_id,
    parse_model_name,
)


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("llama3.2", "llama3.2:latest"),
        ("Llama3.2:LATEST", "llama3.2:latest"),
        ("qwen2.5-coder:7b", "qwen2.5-coder:7b"),
        ("mlx-community/Qwen3-4B-4bit", "mlx-community/qwen3-4b-4bit:latest"),
        ("user/model:tag", "user/model:tag"),
        ("registry.example:5000/ns/model:v1", "registry.example:5000/ns/model:v1"),
        ("_private", "_private:latest"),
    ],
)
def test_valid_names_have_a_canonical_form(name: str, canonical: str) -> None:
    assert check_model_name(name) is None
    assert canonical_name(name) == canonical


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "cannot be empty"),
        ("../etc/passwd", "'..'"),
        ("models/../x", "'..'"),
        ("/abs/path", "not a path"),
        ("~/model", "not a path"),
        ("a\\b", "backslash"),
        ("a//b", "empty part"),
        ("a/", "empty part"),
        ("model:", "tag after ':' is empty"),
        ("model:-bad", "tag"),
        ("-model", "may only use"),
        ("has space", "whitespace"),
        ("a/b/c/d", "host/namespace/name"),
        ("mod$el", "may only use"),
    ],
)
def test_invalid_names_say_why(name: str, fragment: str) -> None:
    problem = check_model_name(name)
    assert problem is not None
    assert fragment in problem
    with pytest.raises(InvalidNameError):
        parse_model_name(name)


def test_colon_before_last_slash_is_a_port_not_a_tag() -> None:
    name = parse_model_name("localhost:5000/ns/model")
    assert (name.host, name.namespace, name.model, name.tag) == (
        "localhost:5000",
        "ns",
        "model",
        None,
    )
    assert name.full == "localhost:5000/ns/model:latest"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mlx-community/Qwen2.5-7B-Instruct-4bit", True),
        ("org/name", True),
        ("name", False),
        ("org/name:tag", False),
        ("org/sub/name", False),
        ("org/na--me", False),
        ("org/name.git", False),
        ("-org/name", False),
    ],
)
def test_repo_ids_follow_hugging_face_rules(text: str, expected: bool) -> None:
    assert is_repo_id(text) is expected
