"""One request to a model's server: lease it, open the request, retry after a crash.

The inference routes send every request to a model through :func:`post`
(whole answers) or :func:`post_stream` (token streams). Both lease the
model's server from the scheduler, open the request on it, and decide what a
failure means:

- a connection the server refused while its process lives (a full listen
  queue) is tried again at once, a few times (``REFUSED_RETRY_PAUSES``);
- a server that died before the client got anything is restarted by the
  scheduler and the request sent once more, while its client waits (the
  route is cancelled when the client leaves, see ``inference.attended``, so a
  request whose client is gone is never sent again);
- a request in flight at two deaths is their likely cause: 422, not sent
  again, and the second death is not counted against the model;
- a server the watchdog restarted (wedged) or that was stopped: 503.

What a request's server went through is the scheduler's ``Lease.loss``; this
module only reads it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar, overload

import httpx

from mlx_lama.gateway.core import Gateway, Route
from mlx_lama.gateway.http import ApiError, JsonObject
from mlx_lama.gateway.proxy import (
    CONNECT_TIMEOUT,
    RawStream,
    UpstreamError,
    backend_body,
    describe,
    open_upstream,
)
from mlx_lama.orchestrator.slots import Lease, Loss, SchedulerError
from mlx_lama.timings import timings
from mlx_lama.units import Duration

# Pauses before trying again a connection refused by a live server (its listen
# queue was full): the first retry is at once, all of them within half a second.
REFUSED_RETRY_PAUSES = (0.0, 0.02, 0.05, 0.1, 0.3)

Upstream = TypeVar("Upstream", RawStream | httpx.Response, httpx.Response)
Answer = TypeVar("Answer")


@dataclass(slots=True)
class Target:
    """Where one request goes: a leased server, or an external one."""

    base_url: str
    served_model: str | None
    lease: Lease | None
    waited: float

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()


async def acquire(
    gateway: Gateway, route: Route, keep_alive: Duration | None, *, suspect: bool = False
) -> Target:
    if route.kind == "external":
        return Target(str(route.url), route.name, None, 0.0)
    if route.kind == "never":
        raise ApiError(
            400,
            f"model '{route.name}' is not served (serve = \"never\" in mlxlama.toml); "
            'set serve = "on-demand" to use it',
        )
    try:
        lease = await gateway.scheduler.acquire(route.name, keep_alive, suspect=suspect)
    except SchedulerError as error:
        raise ApiError(error.status, str(error)) from None
    return Target(lease.base_url, lease.served_model, lease, lease.waited)


async def post(
    gateway: Gateway,
    route: Route,
    call: tuple[str, JsonObject],  # path and body
    keep_alive: Duration | None,
    read: Callable[[Target, httpx.Response], Awaitable[Answer]],
) -> tuple[Target, Answer]:
    """POST to the model's server and ``read`` its whole answer (the lease is
    released and the response closed before this returns)."""
    path, body = call
    client = gateway.client
    assert client is not None

    async def open_on(target: Target) -> httpx.Response:
        payload = backend_body(body, target.served_model)
        return await open_upstream(client, target.base_url + path, payload)

    return await _attempts(gateway, route, keep_alive, open_on, read)


async def open_stream(
    gateway: Gateway,
    route: Route,
    call: tuple[str, JsonObject],  # path and body
    keep_alive: Duration | None,
) -> tuple[Target, RawStream | httpx.Response]:
    """POST for a token stream, and the stream as it opened: the caller closes it
    and releases the target."""
    open_on = _stream_opener(gateway, call)
    return await _attempts(gateway, route, keep_alive, open_on, None)


async def post_stream(
    gateway: Gateway,
    route: Route,
    call: tuple[str, JsonObject],  # path and body
    keep_alive: Duration | None,
    read: Callable[[Target, RawStream | httpx.Response], Awaitable[Answer]],
) -> tuple[Target, Answer]:
    """POST for a token stream and ``read`` all of it, as :func:`post` does."""
    open_on = _stream_opener(gateway, call)
    return await _attempts(gateway, route, keep_alive, open_on, read)


def _stream_opener(
    gateway: Gateway, call: tuple[str, JsonObject]
) -> Callable[[Target], Awaitable[RawStream | httpx.Response]]:
    """Opens a token stream: read off the socket directly for plain-HTTP servers
    (all the engines mlx-lama starts), through httpx otherwise."""
    path, body = call
    client = gateway.client
    assert client is not None

    async def open_on(target: Target) -> RawStream | httpx.Response:
        payload = backend_body(body, target.served_model)
        if target.base_url.startswith("http://"):
            # Connections made ahead only to the servers mlx-lama runs (see spares.py).
            spares = gateway.spares if target.lease is not None else None
            return await RawStream.open(
                target.base_url + path, payload, connect_timeout=CONNECT_TIMEOUT, spares=spares
            )
        return await open_upstream(client, target.base_url + path, payload)

    return open_on


@overload
async def _attempts(
    gateway: Gateway,
    route: Route,
    keep_alive: Duration | None,
    open_on: Callable[[Target], Awaitable[Upstream]],
    read: None,
) -> tuple[Target, Upstream]: ...


@overload
async def _attempts(
    gateway: Gateway,
    route: Route,
    keep_alive: Duration | None,
    open_on: Callable[[Target], Awaitable[Upstream]],
    read: Callable[[Target, Upstream], Awaitable[Answer]],
) -> tuple[Target, Answer]: ...


async def _attempts(
    gateway: Gateway,
    route: Route,
    keep_alive: Duration | None,
    open_on: Callable[[Target], Awaitable[Upstream]],
    read: Callable[[Target, Upstream], Awaitable[Answer]] | None,
) -> tuple[Target, Answer | Upstream]:
    """Lease, open and (with ``read``) read, at most twice: see the module docstring."""
    for attempt in (1, 2):
        target = await acquire(gateway, route, keep_alive, suspect=attempt == 2)
        upstream: Upstream | None = None
        handed_over = False
        try:
            upstream = await _opened(gateway, target, open_on)
            if read is None:
                handed_over = True
                return target, upstream
            return target, await read(target, upstream)
        except (UpstreamError, httpx.HTTPError) as error:
            loss = await _loss(gateway, target, error)
            if loss is None:
                raise _failed(route.name, error) from None
            if loss.kind != "crashed" or attempt == 2:
                raise lost_answer(route.name, loss, attempt) from None
        finally:
            if not handed_over:
                if upstream is not None:
                    await upstream.aclose()
                target.release()
    raise AssertionError("unreachable")  # pragma: no cover


def _failed(name: str, error: UpstreamError | httpx.HTTPError) -> ApiError:
    """The error for a request the model server failed while it stayed up: its own
    4xx as it is; for its own 5xx (often a bare "Internal Server Error"), which model
    failed and where its reason is, since its server says no more."""
    if not isinstance(error, UpstreamError):
        return ApiError(502, describe(error))
    if error.answered and error.status >= 500:
        return ApiError(
            error.status,
            f"model '{name}' failed on this request (its server answered: {error}); "
            f"the reason is in its log: mlx-lama logs {name}",
        )
    return ApiError(error.status, describe(error))


async def _opened(
    gateway: Gateway, target: Target, open_on: Callable[[Target], Awaitable[Upstream]]
) -> Upstream:
    """``open_on(target)``; a connection its server refused is tried again at once
    while the server's process lives, a few times, before the error is final."""
    lease = target.lease
    for pause in REFUSED_RETRY_PAUSES:
        try:
            return await open_on(target)
        except UpstreamError as error:
            if not error.connect or lease is None or lease.loss is not None:
                raise
            if await gateway.scheduler.lost(lease.slot):
                raise
            await asyncio.sleep(pause)
    return await open_on(target)


async def _loss(gateway: Gateway, target: Target, error: Exception) -> Loss | None:
    """How the request's server went away under it (None: it did not). A broken
    connection whose cause the scheduler has not seen yet (it looks four times a
    second) is settled here first, waiting up to ``dying_grace`` for the exit; an
    error answer of the server's own says it is there."""
    lease = target.lease
    if lease is None:
        return None
    if lease.loss is None and not (isinstance(error, UpstreamError) and error.answered):
        # Still its server's work (a crash or stop would have said so): did it die?
        await gateway.scheduler.lost(lease.slot, grace=timings().dying_grace)
    return lease.loss


def lost_reason(name: str, target: Target) -> Callable[[], str | None]:
    """For a stream's error line: what :func:`lost_answer` says once ``target``'s
    server went away under it (None until then)."""

    def reason() -> str | None:
        loss = target.lease.loss if target.lease is not None else None
        return None if loss is None else lost_answer(name, loss, 1).message

    return reason


def lost_answer(name: str, loss: Loss, attempt: int) -> ApiError:
    """The error for a request whose model server went away under it."""
    if loss.kind == "stopped":
        return ApiError(503, f"model {name!r} was stopped while answering ({loss.why})")
    if loss.kind == "wedged":
        return ApiError(
            503,
            f"model {name!r} was restarted: its server {loss.why}. This request was not "
            "sent again; retry it (if it fails the same way, it is likely the cause)",
        )
    if attempt == 2:
        return ApiError(
            422,
            f"model {name!r}'s server died twice while this request was in flight (last: "
            f"{loss.why}); it is likely the cause and was not sent again",
        )
    return ApiError(502, f"model {name!r}'s server died while answering ({loss.why})")
