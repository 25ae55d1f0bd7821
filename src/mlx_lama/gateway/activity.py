"""What each model server has been doing lately, for ``mlx-lama top``.

The gateway reports every finished request here (:meth:`Activity.request`,
from the same place that feeds :class:`~mlx_lama.gateway.metrics.Metrics`) and
every server start (:meth:`Activity.load`). ``GET /mlx-lama/stats`` reads it
back: per model the totals, time to first token (p50, p95 of the latest
requests), generation speed, the last load time and the last request; for the
gateway the request rate; and the latest requests, newest first.

Unlike the Prometheus counters, which only grow, this keeps short windows of
recent samples, so a dashboard shows how things are going now. Bounded: a
fixed number of samples per model and of recent requests; models are manifest
names (the caller's job, as for the metrics). No I/O, no logging; the clock
is injectable for tests.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TTFT_SAMPLES = 200  # per model, for the percentiles
SPEED_SAMPLES = 20  # per model: tokens/s over the latest streamed answers
RECENT = 50  # requests kept for the "recent requests" list
RATE_WINDOW = 60.0  # seconds over which requests/s is computed


@dataclass(frozen=True, slots=True)
class Finished:
    """One finished request, as the recent list shows it."""

    at: float  # wall clock, when it finished
    model: str
    endpoint: str
    status: int
    seconds: float
    prompt_tokens: int
    completion_tokens: int
    method: str = "POST"

    def as_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "model": self.model,
            "method": self.method,
            "endpoint": self.endpoint,
            "status": self.status,
            "seconds": round(self.seconds, 6),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


@dataclass(slots=True)
class _Model:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    last_request_at: float | None = None
    load_seconds: float | None = None  # the latest successful start
    loads: int = 0
    ttft: deque[float] = field(default_factory=lambda: deque(maxlen=TTFT_SAMPLES))
    speed: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=SPEED_SAMPLES))


class Activity:
    """Recent activity per model; see the module docstring. Thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._models: dict[str, _Model] = {}
        self._recent: deque[Finished] = deque(maxlen=RECENT)
        self._finished_at: deque[float] = deque()  # within RATE_WINDOW, for requests/s
        self._total = 0
        self.started_at = clock()

    def request(
        self,
        model: str,
        endpoint: str,
        status: int,
        seconds: float,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        first_token: float | None = None,
        method: str = "POST",
    ) -> None:
        """One finished request of ``model`` (``""``: none) that took ``seconds``;
        ``first_token`` is when its first token came, in seconds after it began."""
        now = self._clock()
        seconds = max(0.0, seconds)
        prompt_tokens, completion_tokens = max(0, prompt_tokens), max(0, completion_tokens)
        with self._lock:
            self._total += 1
            self._finished_at.append(now)
            self._recent.appendleft(
                Finished(
                    now, model, endpoint, status, seconds, prompt_tokens, completion_tokens, method
                )
            )
            if not model:
                return
            entry = self._models.setdefault(model, _Model())
            entry.requests += 1
            entry.errors += status >= 400
            entry.prompt_tokens += prompt_tokens
            entry.completion_tokens += completion_tokens
            entry.last_request_at = now
            if first_token is not None:
                entry.ttft.append(max(0.0, first_token))
                generating = seconds - first_token
                if completion_tokens > 1 and generating > 0:
                    # The first token came at first_token; the rest took the remaining time.
                    entry.speed.append((completion_tokens - 1, generating))

    def load(self, model: str, seconds: float, ok: bool) -> None:
        """One start of ``model``'s server (only successful ones set the load time)."""
        with self._lock:
            entry = self._models.setdefault(model, _Model())
            if ok:
                entry.loads += 1
                entry.load_seconds = max(0.0, seconds)

    def model(self, name: str) -> dict[str, Any]:
        """``name``'s figures: totals, ``ttft_p50``/``ttft_p95`` and ``tokens_per_second``
        (None until there is a sample), ``load_seconds``, ``last_request_at``."""
        with self._lock:
            entry = self._models.get(name) or _Model()
            ttft = sorted(entry.ttft)
            tokens = sum(n for n, _ in entry.speed)
            spent = sum(s for _, s in entry.speed)
            return {
                "requests": entry.requests,
                "errors": entry.errors,
                "prompt_tokens": entry.prompt_tokens,
                "completion_tokens": entry.completion_tokens,
                "tokens_per_second": round(tokens / spent, 3) if spent > 0 else None,
                "ttft_p50": _percentile(ttft, 50),
                "ttft_p95": _percentile(ttft, 95),
                "load_seconds": entry.load_seconds,
                "loads": entry.loads,
                "last_request_at": entry.last_request_at,
            }

    def gateway(self) -> dict[str, Any]:
        """The gateway's totals: requests, requests/s over the last RATE_WINDOW (or
        since start when younger), start time and uptime."""
        now = self._clock()
        with self._lock:
            while self._finished_at and now - self._finished_at[0] > RATE_WINDOW:
                self._finished_at.popleft()
            window = min(RATE_WINDOW, max(now - self.started_at, 1.0))
            return {
                "started_at": self.started_at,
                "uptime_seconds": round(now - self.started_at, 3),
                "requests": self._total,
                "requests_per_second": round(len(self._finished_at) / window, 3),
            }

    def recent(self) -> list[dict[str, Any]]:
        """The latest finished requests, newest first."""
        with self._lock:
            return [f.as_json() for f in self._recent]


def _percentile(ordered: list[float], percent: int) -> float | None:
    """The ``percent``-th percentile of sorted samples (None when there are none)."""
    if not ordered:
        return None
    if len(ordered) == 1:
        return round(ordered[0], 6)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return round(cuts[percent - 1], 6)
