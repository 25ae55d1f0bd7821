"""The request log: every request the gateway answers, counted once.

A request to a model is counted by its route when it ends, with its model and
tokens (``Gateway.finished``). :class:`RequestLog`, the outermost layer of the
app, counts every other one: the routes without a model (``/api/tags``,
``/api/pull``, ...), and the requests refused before any route ran (a missing
API key, a body too large, bad JSON, an unknown path). Each gets one line in
daemon.log and a place in ``/mlx-lama/stats``' recent requests. The routes that
dashboards poll (``/health``, ``/metrics``, ``/mlx-lama/stats``) are left out,
or they would crowd out the requests worth seeing.

Which request is being answered travels in a context variable (:func:`current`),
which the tasks a request spawns inherit, so a count made from a stream's close
is seen here as made.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlx_lama.gateway.http import CLIENT_GONE

QUIET = frozenset({"/health", "/metrics", "/mlx-lama/stats"})  # polled by dashboards
UNMATCHED = "(no route)"  # the endpoint a request for an unknown path is counted under


@dataclass(slots=True)
class Entry:
    """The request being answered: its method, and whether a route counted it."""

    method: str
    counted: bool = False


_current: ContextVar[Entry | None] = ContextVar("mlx_lama_request", default=None)


def current() -> Entry | None:
    """The request this code runs for, None outside one."""
    return _current.get()


class Counter(Protocol):
    """What counts a request (``Gateway.finished``)."""

    def finished(
        self, model: str, endpoint: str, status: int, seconds: float, *, method: str | None = ...
    ) -> None: ...


class RequestLog:
    """ASGI middleware: counts each HTTP request no route counted (``Gateway.finished``)."""

    def __init__(self, app: ASGIApp, gateway: Counter) -> None:
        self.app = app
        self._gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in QUIET:
            await self.app(scope, receive, send)
            return
        entry = Entry(scope["method"])
        token = _current.set(entry)
        started = time.monotonic()
        status = CLIENT_GONE  # until an answer starts: a client that left first

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            _current.reset(token)
            if not entry.counted:
                route = scope.get("route")
                endpoint = getattr(route, "path", None) or UNMATCHED
                seconds = time.monotonic() - started
                self._gateway.finished("", endpoint, status, seconds, method=entry.method)
