"""The token-streaming routes answered straight from ASGI, without Starlette's layers.

Why: at 8 concurrent streams ``mlx_lm.server`` starts a batch only once the
last of its requests has arrived, and the gateway handles requests one after
another on one event loop, so every bit of CPU a request costs before it is
forwarded is paid 8 times over in the time to the first token. Starlette's
layers (two error middlewares, the router's pattern matching, a ``Request``
per layer, a wrapper around every ``send``) cost about as much as the
gateway's own work there.

:class:`HotPath` sits inside ``SecurityMiddleware`` (so every security check
still applies) and in front of the gateway's Starlette app. It answers
``POST`` to the routes of ``inference.STREAMING`` itself, with the same
handlers as the app's routes and the same error answers as the app's
exception handlers; every other request goes on to the app, which also still
has those routes (for its 405 and redirect answers). It decides nothing about
models and keeps no state.
"""

from __future__ import annotations

import logging
import time

from starlette.requests import ClientDisconnect

from mlx_lama.gateway.core import Gateway
from mlx_lama.gateway.http import INTERNAL_ERROR, ApiError, error_response, parse_json
from mlx_lama.gateway.inference import STREAMING, Call, Handler
from mlx_lama.gateway.security import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)


class HotPath:
    """ASGI app: the routes of ``inference.STREAMING`` for POST, else ``app``."""

    def __init__(
        self, app: ASGIApp, gateway: Gateway, routes: dict[str, Handler] | None = None
    ) -> None:
        self.app = app
        self.gateway = gateway
        self.routes = STREAMING if routes is None else routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = None
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            handler = self.routes.get(scope["path"])
        if handler is None:
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        path: str = scope["path"]
        try:
            body = parse_json(await _body(receive))
            response = await handler(Call(self.gateway, path, body, receive, started))
        except ApiError as error:  # as the app's ApiError handler answers
            response = error_response(path, error)
        except Exception as error:  # as the app's handler for everything else
            log.error("unexpected error on %s", path, exc_info=error)
            await error_response(path, ApiError(500, INTERNAL_ERROR))(scope, receive, send)
            raise
        try:
            await response(scope, receive, send)
        except Exception as error:
            # Every response sends its start first, so it has begun: as Starlette's
            # error middleware, log it and leave the connection to the server.
            log.error("unexpected error on %s", path, exc_info=error)
            raise


async def _body(receive: Receive) -> bytes:
    """The whole request body (as ``Request.body`` reads it)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()
