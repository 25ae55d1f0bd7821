"""Requests for a model another gateway serves (``[remotes.NAME]``), sent on to it.

The remote is itself an Ollama-compatible gateway, so a request goes out as it
came in: the same method, path and JSON body, with the remote's key as
``Authorization`` (the client's own headers never leave this machine) and the
``FORWARDED_HEADER`` mark. The answer comes back byte for byte: a stream as it
streams, with the upstream request closed when the client leaves; a whole
answer read under a disconnect watch. A remote that cannot be reached, or
that refuses our key, is a 502 naming it and its url, in the caller's API
family; the remote's own error answers pass through unchanged.

:class:`HopGuard` notes requests that carry the mark: this gateway answers
them from its own models only (no second hop, so two gateways that list each
other cannot pass a request around). Names of this manifest always win over a
remote's; nothing here edits the manifest or starts servers.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any

import httpx
from starlette.responses import Response

from mlx_lama.gateway.core import Gateway, InvalidName, UnknownModel
from mlx_lama.gateway.http import CLIENT_GONE, ApiError
from mlx_lama.gateway.proxy import ProxyStream, until_disconnect
from mlx_lama.gateway.remotes import FORWARDED_HEADER, RemoteModel, connect_failure
from mlx_lama.gateway.security import ASGIApp, Receive, Scope, Send
from mlx_lama.names import check_model_name

_MARK = FORWARDED_HEADER.lower().encode("latin-1")
_forwarded: ContextVar[bool] = ContextVar("mlx_lama_forwarded", default=False)
_STREAMED = ("application/x-ndjson", "text/event-stream")


class HopGuard:
    """ASGI: runs ``app`` knowing whether the request was forwarded by a gateway
    (it carries ``FORWARDED_HEADER``); see :func:`forwarded`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and any(k == _MARK for k, _ in scope.get("headers", ())):
            token = _forwarded.set(True)
            try:
                await self.app(scope, receive, send)
            finally:
                _forwarded.reset(token)
            return
        await self.app(scope, receive, send)


def forwarded() -> bool:
    """Whether the request being answered came from another gateway."""
    return _forwarded.get()


def serves_locally(gateway: Gateway, name: str) -> bool:
    """Whether a model or alias of this manifest answers to ``name``."""
    try:
        gateway.resolve(name)
    except (InvalidName, UnknownModel):
        return False
    return True


async def remote_for(
    gateway: Gateway, name: object, *, explain_missing: bool = False
) -> RemoteModel | None:
    """The remote that serves ``name``, when no model or alias of this manifest
    does and the request was not forwarded to us; else None (the local routes
    answer, or refuse, as usual). With ``explain_missing``, a name nobody has
    while a remote is not answering is a 404 that says so."""
    if not gateway.remotes or forwarded():
        return None
    if not isinstance(name, str) or not name or check_model_name(name) is not None:
        return None
    if serves_locally(gateway, name):
        return None
    client = gateway.client
    assert client is not None, "the app's lifespan makes the client"
    remote = await gateway.remotes.find(client, name)
    if remote is None and explain_missing:
        silent = gateway.remotes.unanswered()
        if silent:
            notes = "; ".join(f"remote '{s.remote}' at {s.url}: {s.detail}" for s in silent)
            raise ApiError(
                404, f"model '{name}' not found here, and not every remote answered ({notes})"
            )
    return remote


def _unreachable(remote: RemoteModel, error: httpx.HTTPError) -> str:
    if isinstance(error, httpx.ConnectError):
        why = connect_failure(error)
    elif isinstance(error, httpx.TimeoutException):
        why = "it did not answer in time"
    else:
        why = f"the connection failed ({type(error).__name__})"
    return (
        f"remote '{remote.remote}' at {remote.url} is not reachable: {why}; "
        f"start `mlx-lama serve` there, or fix [remotes.{remote.remote}] url in mlxlama.toml"
    )


def _stopped(remote: RemoteModel, error: httpx.HTTPError) -> str:
    return f"remote '{remote.remote}' at {remote.url} stopped answering ({type(error).__name__})"


def _refused(remote: RemoteModel, status: int) -> str:
    if status == 401:
        fix = (
            f"its api_key under [remotes.{remote.remote}] is not the one that gateway expects"
            if remote.api_key
            else f"set api_key under [remotes.{remote.remote}] to the key of its [server]"
        )
    else:
        fix = "it refuses requests from this machine (its host or origin checks)"
    return f"remote '{remote.remote}' at {remote.url} refused the request (HTTP {status}): {fix}"


async def forward(
    gateway: Gateway,
    remote: RemoteModel,
    request: tuple[str, str, dict[str, Any] | None],  # method, path, JSON body
    receive: Receive,
    started: float,
) -> Response:
    """Send ``request`` to ``remote`` and answer with what it answers (see the module
    docstring). Counts the request for ``remote.name`` once it ends."""
    method, path, body = request
    client = gateway.client
    assert client is not None, "the app's lifespan makes the client"
    headers = remote.headers()
    headers["Accept-Encoding"] = "identity"  # the bytes pass through as they are
    content = None
    if body is not None:
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        headers["Content-Type"] = "application/json"
    outgoing = client.build_request(method, remote.url + path, content=content, headers=headers)
    try:
        response = await until_disconnect(receive, lambda: client.send(outgoing, stream=True))
    except httpx.HTTPError as error:
        raise ApiError(502, _unreachable(remote, error)) from None
    if response is None:  # the client left while the remote worked
        gateway.finished(remote.name, path, CLIENT_GONE, time.monotonic() - started)
        return Response(status_code=CLIENT_GONE)
    kind = response.headers.get("content-type", "")
    if response.status_code < 400 and kind.startswith(_STREAMED):
        return _streamed(gateway, remote, response, path, started)
    try:
        data = await until_disconnect(receive, response.aread)
    except httpx.HTTPError as error:
        problem = f"{_stopped(remote, error)} before its answer was complete"
        raise ApiError(502, problem) from None
    finally:
        await response.aclose()
    status = response.status_code
    if data is None:
        status = CLIENT_GONE
    elif status in (401, 403):
        raise ApiError(502, _refused(remote, status))
    gateway.finished(remote.name, path, status, time.monotonic() - started)
    if data is None:
        return Response(status_code=CLIENT_GONE)
    return Response(data, status_code=status, media_type=kind or None)


def _streamed(
    gateway: Gateway, remote: RemoteModel, response: httpx.Response, path: str, started: float
) -> Response:
    """The remote's token stream, passed on chunk by chunk; a remote that breaks off
    ends it with an error line (NDJSON) or event (SSE), as a local engine would."""
    kind = response.headers["content-type"]
    sse = kind.startswith("text/event-stream")

    async def chunks() -> AsyncIterator[bytes]:
        last = b"\n"
        try:
            async for chunk in response.aiter_raw():
                if chunk:
                    last = chunk[-1:]
                    yield chunk
        except httpx.HTTPError as error:
            message = _stopped(remote, error)
            lead = b"" if last == b"\n" else b"\n"
            if sse:
                failure = {"error": {"message": message, "type": "server_error"}}
                yield lead + b"\ndata: " + json.dumps(failure).encode() + b"\n\n"
            else:
                yield lead + json.dumps({"error": message}).encode() + b"\n"

    async def close(status: int) -> None:
        try:
            gateway.finished(remote.name, path, status, time.monotonic() - started)
        finally:
            await response.aclose()

    return ProxyStream(chunks(), media_type=kind, on_close=close)
