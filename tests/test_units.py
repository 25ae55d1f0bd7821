"""Durations and sizes in the forms Ollama and users write them."""

from __future__ import annotations

import math

import pytest

from mlx_lama.units import Duration, Size


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("90s", 90.0),
        ("250ms", 0.25),
        ("0", 0.0),
        (300, 300.0),
        (0.5, 0.5),
        (0, 0.0),
        (-1, math.inf),
        (-1.0, math.inf),
        ("-1m", math.inf),
        ("2h0m0s", 7200.0),
    ],
)
def test_duration_parses_ollama_forms(value: object, seconds: float) -> None:
    assert Duration.parse(value).seconds == seconds


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("300", "missing unit"),
        ("-1", "missing unit"),
        ("5 minutes", "use units"),
        ("1d", "use units"),
        ("", "invalid duration"),
        ("m", "use units"),
        (True, "number of seconds"),
        ([1], "number of seconds"),
    ],
)
def test_duration_refuses_other_forms(value: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        Duration.parse(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (300.0, "5m"),
        (5400.0, "1h30m"),
        (0.0, "0s"),
        (math.inf, "forever"),
        (61.5, "1m1.5s"),
        (0.003, "3ms"),
        (0.25, "250ms"),
    ],
)
def test_duration_renders_compactly(seconds: float, text: str) -> None:
    assert str(Duration(seconds)) == text
    assert Duration(seconds).forever is math.isinf(seconds)


@pytest.mark.parametrize(
    ("value", "resolved"),
    [
        ("24GB", 24 * 2**30),
        ("24GiB", 24 * 2**30),
        ("512MB", 512 * 2**20),
        ("1.5g", int(1.5 * 2**30)),
        ("2 TB", 2 * 2**40),
        (4096, 4096),
        ("75%", 12 * 2**30),
        ("100%", 16 * 2**30),
    ],
)
def test_size_resolves_against_physical_memory(value: object, resolved: int) -> None:
    assert Size.parse(value).resolve(16 * 2**30) == resolved


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("0%", "above 0"),
        ("101%", "at most 100"),
        ("24XB", "use a number with a unit"),
        ("lots", "use a number with a unit"),
        (0, "positive"),
        (-5, "positive"),
        (1.5, "size such as"),
        (False, "size such as"),
    ],
)
def test_size_refuses_nonsense(value: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        Size.parse(value)


def test_size_renders_its_form() -> None:
    assert str(Size.parse("75%")) == "75%"
    assert str(Size.parse("24GB")) == "24GB"
