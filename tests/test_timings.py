"""MLX_LAMA_TIMINGS: the daemon's time constants, overridable for tests and debugging."""

from __future__ import annotations

import pytest

from mlx_lama.errors import UsageError
from mlx_lama.timings import TIMINGS_ENV, Timings, timings


def test_defaults_without_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TIMINGS_ENV, raising=False)
    assert timings() == Timings()
    assert timings().drain == 30.0 and timings().first_backoff == 1.0


def test_pairs_in_seconds_or_milliseconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TIMINGS_ENV, "first_backoff=50ms, drain=0.5  tick=.1s")
    got = timings()
    assert (got.first_backoff, got.drain, got.tick) == (0.05, 0.5, 0.1)
    assert got.failure_window == Timings().failure_window  # the rest keep their defaults


@pytest.mark.parametrize("text", ["drain", "drain=", "drain=-1", "drian=1", "drain=1h", "=1"])
def test_a_bad_pair_is_refused_with_the_names(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv(TIMINGS_ENV, text)
    with pytest.raises(UsageError) as caught:
        timings()
    assert TIMINGS_ENV in caught.value.message and repr(text) in caught.value.message
    assert "first_backoff" in (caught.value.hint or "")
