"""Token streams written to the client from the model server's callbacks.

Why: relaying a token through tasks (the upstream read wakes a task, which
resumes an async generator, which awaits uvicorn's ``send``) costs a future,
a task step and half a dozen coroutine frames per token: about 12 us of CPU
per token here, a fifth of what the gateway spent on each (``python -m
bench.gateway_cpu --tokens 256 --streams 1``). On a small machine that is CPU
the engine needs. A relay that writes what arrives from ``data_received``
costs none of it.

:class:`PushedStream` does that when it can: on a connection of uvicorn's
httptools protocol (the ``send`` it is given is that connection's own, so no
middleware wraps the response), with a chunked response (uvicorn chose the
framing when the head was sent) and a model server's body that ends with its
connection or is chunked (``RawStream.divert``). It sends the head and the
end through ``send`` as usual, so uvicorn's bookkeeping of the response stays
true, and writes each chunk between them to uvicorn's transport the way
uvicorn's ``send`` would. When the client cannot take more (uvicorn's flow
control says its transport is paused), it stops reading from the model server
until it can. Anywhere else (another server, a wrapped ``send``, an upstream
body of a given length) it reads the body in a task, as
:class:`~mlx_lama.gateway.proxy.ProxyStream` does, with the same :class:`Body`
turning the model server's bytes into the client's: both paths send the same
bytes.

Pushed writes to one client are at least ``flush_interval`` apart
(``[server] flush_interval``): what comes sooner after a write is held and
goes out with whatever else came by then when the interval is up (at once at
the end, or when more than HOLD_LIMIT is held). Each write wakes the client's
process, and on a small machine the engine shares the cores with it: the tiny
test model makes about 800 tokens a second here, and gathering them by 3 ms
saves the client most of its wake-ups (``python -m bench flush``). A stream
slower than one token per interval (about 330 a second at 3 ms) has each
written as it comes, and the first write of a stream is never held. A body
read in a task (see above) is written read by read.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from starlette.types import Send

from mlx_lama.gateway.proxy import STOPPED, ProxyStream, RawStream, UpstreamError, describe
from mlx_lama.gateway.wire import Wire

log = logging.getLogger(__name__)

HOLD_LIMIT = 65536  # bytes held for the flush interval at most; more is written at once


class Body(Protocol):
    """The client's bytes for a model server's body. Pure but for the clock."""

    def feed(self, data: bytes) -> bytes:
        """What to send for the next bytes that came (b"" for nothing yet); raises
        UpstreamError for a body that cannot be relayed (nothing is fed after)."""
        ...

    def end(self) -> bytes:
        """What to send at the body's end (the last event, an error for a body that
        ended early)."""
        ...

    def fail(self, problem: str) -> bytes:
        """What to send when the model server failed (``problem``, for the client)."""
        ...

    @property
    def complete(self) -> bool:
        """Nothing more is to be sent (the answer's end was seen): the rest of the
        model server's body is not read."""
        ...


async def relayed(upstream: RawStream, body: Body) -> AsyncIterator[bytes]:
    """The client's bytes read in a task: what :class:`PushedStream` writes."""
    try:
        while data := await upstream.read():
            if some := body.feed(data):
                yield some
            if body.complete:
                return
        tail = body.end()
    except UpstreamError as error:
        tail = body.fail(describe(error))
    if tail:
        yield tail


class PushedStream(ProxyStream):
    """A ProxyStream of ``body`` over ``upstream``, pushed when it can be (see above)."""

    def __init__(
        self,
        upstream: RawStream,
        body: Body,
        *,
        media_type: str,
        on_close: Callable[[], Awaitable[None]],
        flush_interval: float = 0.0,
    ) -> None:
        super().__init__(relayed(upstream, body), media_type=media_type, on_close=on_close)
        self._upstream = upstream
        self._body = body
        self.flush_interval = flush_interval  # seconds
        self.pushed = False  # whether the body went the pushed way (for tests)

    async def stream_response(self, send: Send) -> None:
        client = _uvicorn_cycle(send)
        await self.send_start(send)
        if client is None or client.chunked_encoding is not True or client.disconnected:
            await self.send_body(send)
            return
        pump = _Pump(client, self._body, self.flush_interval)
        wire = self._upstream.divert(pump.arrived, pump.ended)
        if wire is None:
            await self.send_body(send)
            return
        self.pushed = True
        await pump.run(wire)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class _Pump:
    """Writes the client's chunks from the model server's ``data_received``."""

    def __init__(self, client: Any, body: Body, flush_interval: float) -> None:
        self._client = client  # uvicorn's RequestResponseCycle
        self._transport: asyncio.Transport = client.transport
        self._flow = client.flow
        self._body = body
        self._wire: Wire | None = None
        self._over = False
        self._loop = asyncio.get_running_loop()
        self._wake: asyncio.Future[None] = self._loop.create_future()
        self._interval = flush_interval
        self._written = -math.inf  # perf_counter() of the last write
        self._held: list[bytes] = []  # what waits for the interval to pass
        self._held_size = 0
        self._timer: asyncio.TimerHandle | None = None  # to write what is held

    async def run(self, wire: Wire) -> None:
        """Until the body has ended (or failed): wait, and while the client's transport
        is full, for it to drain."""
        self._wire = wire
        while True:
            await self._wake
            if self._over:
                return
            self._wake = self._loop.create_future()
            await self._flow.drain()
            if self._over:
                return
            wire.resume()

    def arrived(self, data: bytes) -> None:
        if self._over:
            return
        try:
            out = self._body.feed(data)
        except UpstreamError as error:
            self._finish(self._body.fail(describe(error)))
            return
        except Exception as error:
            self._failed(error)
            return
        if self._body.complete:
            self._finish(out)
        elif out:
            self._send(out)

    def _send(self, data: bytes) -> None:
        """Write ``data`` now, or hold it until the flush interval since the last
        write is up."""
        if self._held:
            self._hold(data)
            return
        now = time.perf_counter()
        wait = self._written + self._interval - now
        if wait > 0:
            self._timer = self._loop.call_later(wait, self._flush)
            self._hold(data)
            return
        self._written = now
        self._write(data)
        self._check_flow()

    def _hold(self, data: bytes) -> None:
        self._held.append(data)
        self._held_size += len(data)
        if self._held_size > HOLD_LIMIT:  # not a token stream's pace: no use waiting
            self._flush()

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._over:
            return
        data = b"".join(self._held)
        self._held.clear()
        self._held_size = 0
        self._written = time.perf_counter()
        self._write(data)
        self._check_flow()

    def _check_flow(self) -> None:
        """Stop reading from the model server while the client cannot take more."""
        if self._flow.write_paused:
            if self._wire is not None:  # else this is what divert found: one chunk
                self._wire.pause()
            self._signal()

    def ended(self, error: BaseException | None) -> None:
        if self._over:
            return
        try:
            tail = self._body.end() if error is None else self._body.fail(STOPPED)
        except Exception as failure:
            self._failed(failure)
            return
        self._finish(tail)

    def _failed(self, error: Exception) -> None:
        """A bug in the Body: in the log, and to the client as the gateway's error (not
        the model server's). In a callback, a raise would leave the stream hanging."""
        log.error("unexpected error relaying a stream", exc_info=error)
        self._finish(self._body.fail("internal error"))

    def _finish(self, tail: bytes) -> None:
        self._over = True
        if self._timer is not None:
            self._timer.cancel()
        self._write(b"".join(self._held) + tail)
        if self._wire is not None:
            self._wire.pause()  # nothing more is relayed; the stream's close closes it
        self._signal()

    def _write(self, data: bytes) -> None:
        if data and not self._client.disconnected:
            # uvicorn's own framing of a body chunk on a chunked response
            self._transport.write(b"%x\r\n%b\r\n" % (len(data), data))

    def _signal(self) -> None:
        if not self._wake.done():
            self._wake.set_result(None)


def _uvicorn_cycle(send: Send) -> Any | None:
    """The uvicorn httptools request whose bound ``send`` this is, else None."""
    client = getattr(send, "__self__", None)
    if client is None:
        return None
    try:
        from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
    except ImportError:  # no httptools: uvicorn serves with h11
        return None
    return client if type(client) is RequestResponseCycle else None
