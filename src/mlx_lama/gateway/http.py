"""Request bodies in, error bodies out: the HTTP edges every gateway route shares.

:func:`read_json` turns a request body into a JSON object or an
:class:`ApiError` (400 with Ollama's wording); :func:`check_sampling` refuses
numbers a backend would choke on; :func:`error_response` renders an
``ApiError`` in the caller's API family (Ollama's ``{"error": ...}``, or
OpenAI's error object under ``/v1/``). Pure apart from reading the body.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, TypeGuard

from starlette.requests import Request
from starlette.responses import Response

from mlx_lama.gateway.security import error_body

JsonObject = dict[str, Any]

MAX_TOKENS_CAP = 1_000_000
CLIENT_GONE = 499  # nginx's status for a client that closed the connection first
MAX_STOP_SEQUENCES = 64
MAX_STOP_LENGTH = 4096
_INT64 = 2**63
INTERNAL_ERROR = "internal error; see the gateway log"  # the answer to an unexpected exception


class ApiError(Exception):
    """An error answer: HTTP ``status`` and a message safe to show the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(path: str, error: ApiError) -> Response:
    return Response(
        error_body(path, error.status, error.message),
        status_code=error.status,
        media_type="application/json",
    )


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


async def read_json(request: Request) -> JsonObject:
    """The body as a JSON object; 400 for an empty body, bad JSON or a non-object."""
    return parse_json(await request.body())


def parse_json(raw: bytes) -> JsonObject:
    """``raw`` as a JSON object; 400 when it is empty, bad JSON or not an object. Pure."""
    if not raw.strip():
        raise ApiError(400, "missing request body")
    try:
        data = json.loads(raw, parse_constant=_no_constants)
    except RecursionError:
        raise ApiError(400, "invalid JSON: nested too deeply") from None
    except UnicodeDecodeError:
        raise ApiError(400, "invalid JSON: the body is not UTF-8") from None
    except ValueError as error:
        raise ApiError(400, f"invalid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid JSON: the body must be a JSON object")
    return data


def check_sampling(body: Mapping[str, Any]) -> None:
    """Refuse sampling values that are the wrong type or out of range (400), before a
    backend sees them: mlx_lm.server drops the connection on some of them."""
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is not None and (not is_int(value) or not 1 <= value <= MAX_TOKENS_CAP):
            raise ApiError(400, f"{key} must be an integer from 1 to {MAX_TOKENS_CAP}")
    _number(body, "temperature", 0.0, 100.0)
    _number(body, "top_p", 0.0, 1.0)
    _number(body, "min_p", 0.0, 1.0)
    _number(body, "repetition_penalty", 0.0, 100.0)
    _number(body, "presence_penalty", -2.0, 2.0)
    _number(body, "frequency_penalty", -2.0, 2.0)
    top_k = body.get("top_k")
    if top_k is not None and (not is_int(top_k) or not -1 <= top_k <= 1_000_000):
        raise ApiError(400, "top_k must be an integer >= 0")
    seed = body.get("seed")
    if seed is not None and (not is_int(seed) or not -_INT64 <= seed < _INT64):
        raise ApiError(400, "seed must be a 64-bit integer")
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise ApiError(400, "stop must be a string or a list of strings")
        if len(stops) > MAX_STOP_SEQUENCES or any(len(s) > MAX_STOP_LENGTH for s in stops):
            raise ApiError(
                400, f"stop allows at most {MAX_STOP_SEQUENCES} sequences of {MAX_STOP_LENGTH}"
            )


def is_int(value: object) -> TypeGuard[int]:
    """An integer, and not a bool (JSON's true is no count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _number(body: Mapping[str, Any], key: str, low: float, high: float) -> None:
    value = body.get(key)
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise ApiError(400, f"{key} must be a number from {low:g} to {high:g}")
