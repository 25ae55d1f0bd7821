"""How long the daemon waits for things: its time constants in one table.

Each has a default fit for real models; ``MLX_LAMA_TIMINGS`` overrides any of
them, as ``name=seconds`` pairs separated by commas or spaces (``ms`` and ``s``
suffixes allowed)::

    MLX_LAMA_TIMINGS="first_backoff=50ms, drain=0.5"

It exists so tests run backoff, drain and debounce in milliseconds against
the real code paths, and for debugging; users seldom need it. The variable is
looked up at each use (each value parsed once), so a test sets it for an
in-process gateway and a daemon it starts alike. ``mlx-lama serve`` reads it
before it starts anything and refuses a bad value.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields, replace
from functools import lru_cache

from mlx_lama.errors import UsageError

TIMINGS_ENV = "MLX_LAMA_TIMINGS"


@dataclass(frozen=True)
class Timings:
    """Seconds, each."""

    first_backoff: float = 1.0  # before a start after one failure; doubles with each failure
    max_backoff: float = 60.0  # the longest wait between starts
    failure_window: float = 600.0  # failures older than this no longer count toward giving up
    drain: float = 30.0  # an old server's requests get this long before it is stopped
    name_taken_retry: float = 5.0  # before an always server another project runs is tried again
    tick: float = 0.25  # between the scheduler's looks at every server
    probe_tick: float = 1.0  # between the supervisor's looks for a probe that is due
    probe_timeout: float = 20.0  # a liveness probe (a one-token generation) may take this long
    min_probe_timeout: float = 5.0  # ... or, with a shorter probe interval, down to this
    shutdown_grace: float = 10.0  # in-flight requests get this long when the daemon stops
    dying_grace: float = 1.0  # a server that broke a request's connection gets this long to exit
    watch_step: float = 0.05  # a burst of manifest saves ends after this long without events
    watch_debounce: float = 1.6  # the longest a burst is gathered before it is reported anyway
    watch_idle: float = 1.0  # with no events this long, the watch looks at the file anyway


_NAMES = frozenset(f.name for f in fields(Timings))
_VALUE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s)?")


def timings() -> Timings:
    """The defaults, with ``MLX_LAMA_TIMINGS`` applied; UsageError for a bad value."""
    return _parsed(os.environ.get(TIMINGS_ENV, "").strip())


@lru_cache(maxsize=8)
def _parsed(text: str) -> Timings:
    """``text`` read once per value (the scheduler asks four times a second and on
    every request)."""
    if not text:
        return Timings()
    changes: dict[str, float] = {}
    for item in re.split(r"[\s,]+", text):
        name, equals, value = item.partition("=")
        match = _VALUE.fullmatch(value.strip())
        if name not in _NAMES or not equals or match is None:
            raise UsageError(
                f"{TIMINGS_ENV}: {item!r} is not name=seconds",
                hint=f"names: {', '.join(sorted(_NAMES))}; e.g. drain=0.5 or drain=500ms",
            )
        number = float(match.group(1))
        changes[name] = number / 1000 if match.group(2) == "ms" else number
    return replace(Timings(), **changes)
