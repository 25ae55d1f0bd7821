"""The gateway's request statistics, rendered for ``GET /metrics`` as Prometheus text.

The gateway app calls :class:`Metrics` once per finished request (``request``,
plus ``tokens`` and ``first_token`` where the backend reported them) and once
per on-demand model server start (``load``); the ``/metrics`` route calls
``render`` with the models loaded right now and serves the text with
:data:`CONTENT_TYPE` (exposition format 0.0.4, written by hand: no
prometheus_client dependency).

Pure and cheap: no I/O, no clock reads (callers pass durations in seconds), no
logging. One lock guards every counter, so request handlers on any thread may
record while a scrape renders.

Label cardinality: every distinct label value is a time series kept for the
life of the process. Callers must pass manifest model names (or ``""``) and
route templates such as ``"/api/chat"``, never raw client input (a requested
model name that is not in the manifest, a raw URL path). As a backstop, each
of the ``model`` and ``endpoint`` labels keeps at most
:data:`MAX_LABEL_VALUES` distinct values; later newcomers are counted under
:data:`OVERFLOW_LABEL`.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

MAX_LABEL_VALUES = 256
OVERFLOW_LABEL = "__other__"

# Upper bounds (seconds) of the histogram buckets; "+Inf" is implied.
TTFT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
REQUEST_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
)  # fmt: skip
LOAD_BUCKETS: tuple[float, ...] = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

_PREFIX = "mlx_lama_"


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model whose server is running, as ``render`` reports it."""

    name: str
    memory_bytes: int  # estimated resident size of its server
    pinned: bool
    resident_bytes: int | None = None  # measured: its server's process tree, when readable


class _Histogram:
    """Per-bucket (not yet cumulative) counts, the sum and the count of observations."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf only
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        # ``le`` is inclusive: the first bound >= value takes it.
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


class Metrics:
    """Counters and histograms for one gateway process; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: set[str] = set()
        self._endpoints: set[str] = set()
        self._requests: dict[tuple[str, str, int], int] = {}
        self._errors: dict[tuple[str, str], int] = {}
        self._durations: dict[tuple[str, str], _Histogram] = {}
        self._prompt: dict[str, int] = {}
        self._completion: dict[str, int] = {}
        self._ttft: dict[str, _Histogram] = {}
        self._loads: dict[tuple[str, str], int] = {}
        self._load_durations: dict[str, _Histogram] = {}

    def request(self, model: str, endpoint: str, status: int, seconds: float) -> None:
        """Count one finished request; ``status >= 400`` also counts as an error.

        ``model`` is a manifest name or ``""`` (no model, e.g. ``/api/tags``);
        ``endpoint`` is the route template, not the raw path.
        """
        seconds = _duration(seconds)
        with self._lock:
            model = _bounded(model, self._models)
            endpoint = _bounded(endpoint, self._endpoints)
            key = (model, endpoint, status)
            self._requests[key] = self._requests.get(key, 0) + 1
            if status >= 400:
                self._errors[model, endpoint] = self._errors.get((model, endpoint), 0) + 1
            histogram = self._durations.get((model, endpoint))
            if histogram is None:
                histogram = self._durations[model, endpoint] = _Histogram(REQUEST_BUCKETS)
            histogram.observe(seconds)

    def tokens(self, model: str, prompt: int, completion: int) -> None:
        """Add one response's prompt and completion token counts."""
        # Counters must never go down, whatever a backend reports.
        prompt, completion = max(prompt, 0), max(completion, 0)
        with self._lock:
            model = _bounded(model, self._models)
            self._prompt[model] = self._prompt.get(model, 0) + prompt
            self._completion[model] = self._completion.get(model, 0) + completion

    def first_token(self, model: str, seconds: float) -> None:
        """Record the time from receiving a request to its first generated token."""
        seconds = _duration(seconds)
        with self._lock:
            model = _bounded(model, self._models)
            histogram = self._ttft.get(model)
            if histogram is None:
                histogram = self._ttft[model] = _Histogram(TTFT_BUCKETS)
            histogram.observe(seconds)

    def load(self, model: str, seconds: float, ok: bool) -> None:
        """Record one model server start (an on-demand load), successful or not."""
        seconds = _duration(seconds)
        result = "ok" if ok else "error"
        with self._lock:
            model = _bounded(model, self._models)
            self._loads[model, result] = self._loads.get((model, result), 0) + 1
            histogram = self._load_durations.get(model)
            if histogram is None:
                histogram = self._load_durations[model] = _Histogram(LOAD_BUCKETS)
            histogram.observe(seconds)

    def render(
        self,
        loaded: Sequence[LoadedModel],
        *,
        memory_budget_bytes: int | None,
        crashes: Mapping[str, int] | None = None,
    ) -> str:
        """The whole exposition: every family in a fixed order, samples sorted by labels.
        ``crashes`` counts, per served model, its servers that died while serving."""
        out: list[str] = []
        with self._lock:
            _family(out, "requests_total", "counter", "Finished requests.")
            for (model, endpoint, status), n in sorted(self._requests.items()):
                labels = {"model": model, "endpoint": endpoint, "status": str(status)}
                out.append(_sample("requests_total", labels, str(n)))

            _family(out, "request_errors_total", "counter", "Requests answered with status >= 400.")
            for (model, endpoint), n in sorted(self._errors.items()):
                out.append(_sample("request_errors_total", _me(model, endpoint), str(n)))

            _family(out, "request_duration_seconds", "histogram", "Time from request to last byte.")
            for (model, endpoint), h in sorted(self._durations.items()):
                _histogram(out, "request_duration_seconds", _me(model, endpoint), h)

            _family(out, "prompt_tokens_total", "counter", "Prompt tokens processed.")
            for model, n in sorted(self._prompt.items()):
                out.append(_sample("prompt_tokens_total", {"model": model}, str(n)))

            _family(out, "completion_tokens_total", "counter", "Completion tokens generated.")
            for model, n in sorted(self._completion.items()):
                out.append(_sample("completion_tokens_total", {"model": model}, str(n)))

            _family(
                out, "time_to_first_token_seconds", "histogram", "Time from request to first token."
            )
            for model, h in sorted(self._ttft.items()):
                _histogram(out, "time_to_first_token_seconds", {"model": model}, h)

            _family(out, "model_loads_total", "counter", "Model server starts, by result.")
            for (model, result), n in sorted(self._loads.items()):
                labels = {"model": model, "result": result}
                out.append(_sample("model_loads_total", labels, str(n)))

            _family(
                out, "model_load_duration_seconds", "histogram", "Time to start a model server."
            )
            for model, h in sorted(self._load_durations.items()):
                _histogram(out, "model_load_duration_seconds", {"model": model}, h)

        # The rest comes from the caller's snapshot, not from our state: no lock needed.
        _family(out, "loaded_models", "gauge", "Model servers running now.")
        out.append(_sample("loaded_models", {}, str(len(loaded))))

        _family(out, "model_memory_bytes", "gauge", "Estimated resident size of each loaded model.")
        for m in sorted(loaded, key=lambda m: (m.name, m.pinned)):
            labels = {"model": m.name, "pinned": "true" if m.pinned else "false"}
            out.append(_sample("model_memory_bytes", labels, str(m.memory_bytes)))

        measured = sorted((m.name, m.resident_bytes) for m in loaded if m.resident_bytes)
        if measured:
            _family(out, "server_resident_bytes", "gauge", "Measured resident size of each server.")
            for name, size in measured:
                out.append(_sample("server_resident_bytes", {"model": name}, str(size)))

        if memory_budget_bytes is not None:
            _family(out, "memory_budget_bytes", "gauge", "Memory the gateway may fill with models.")
            out.append(_sample("memory_budget_bytes", {}, str(memory_budget_bytes)))

        if crashes:
            _family(out, "server_crashes_total", "counter", "Servers that died while serving.")
            for name, count in sorted(crashes.items()):
                out.append(_sample("server_crashes_total", {"model": name}, str(count)))

        return "\n".join(out) + "\n"


def _duration(seconds: float) -> float:
    # A histogram's sum must not go down; NaN or negative durations are caller bugs.
    return 0.0 if math.isnan(seconds) or seconds < 0 else float(seconds)


def _bounded(value: str, seen: set[str]) -> str:
    """``value``, or :data:`OVERFLOW_LABEL` once ``seen`` holds the cap of other values."""
    if value in seen:
        return value
    if len(seen) >= MAX_LABEL_VALUES:
        return OVERFLOW_LABEL
    seen.add(value)
    return value


def _me(model: str, endpoint: str) -> dict[str, str]:
    return {"model": model, "endpoint": endpoint}


def _family(out: list[str], name: str, kind: str, help_text: str) -> None:
    # HELP text escapes backslash and newline only (not the double quote).
    escaped = help_text.replace("\\", "\\\\").replace("\n", "\\n")
    out.append(f"# HELP {_PREFIX}{name} {escaped}")
    out.append(f"# TYPE {_PREFIX}{name} {kind}")


def _histogram(out: list[str], name: str, labels: Mapping[str, str], h: _Histogram) -> None:
    cumulative = 0
    bounds: Iterable[float] = (*h.bounds, math.inf)
    for bound, n in zip(bounds, h.counts, strict=True):
        cumulative += n
        le = {**labels, "le": _format_float(bound)}
        out.append(_sample(f"{name}_bucket", le, str(cumulative)))
    out.append(_sample(f"{name}_sum", labels, _format_float(h.sum)))
    out.append(_sample(f"{name}_count", labels, str(h.count)))


def _sample(name: str, labels: Mapping[str, str], value: str) -> str:
    if not labels:
        return f"{_PREFIX}{name} {value}"
    inner = ",".join(f'{key}="{_escape(val)}"' for key, val in labels.items())
    return f"{_PREFIX}{name}{{{inner}}} {value}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_float(value: float) -> str:
    """``value`` as Go's ``strconv.FormatFloat(v, 'g', -1, 64)`` writes it, as Prometheus does.

    Shortest round-trip digits; exponent form below 1e-4 or from 1e+06 on
    (``1e-05``, ``1.5e+06``), plain otherwise (``0.005``, ``1``, ``300``).
    """
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    # repr gives the shortest digits that round-trip, as Go's shortest mode does.
    _, digit_tuple, exponent = Decimal(repr(abs(value))).as_tuple()
    assert isinstance(exponent, int)  # finite, checked above
    digits = "".join(map(str, digit_tuple))
    stripped = digits.rstrip("0")
    exponent += len(digits) - len(stripped)
    digits = stripped
    point = len(digits) + exponent  # digits before the decimal point
    exp10 = point - 1
    if exp10 < -4 or exp10 >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}e{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return f"{sign}{digits}{'0' * (point - len(digits))}"
    return f"{sign}{digits[:point]}.{digits[point:]}"
