"""Token streams relayed to the client at a bounded pace, through ASGI's ``send`` only.

A model server's body (a :class:`~mlx_lama.gateway.proxy.RawStream`) is read in
the response's task as it arrives; a :class:`Body` turns its bytes into the
client's (OpenAI events, or Ollama's lines), and each result is sent with the
public ``http.response.body`` message, so any ASGI server, any middleware and
uvicorn's own flow control apply: while the client cannot take more, ``send``
waits, nothing more is read from the model server, and its connection stops
being read once its buffer is full (``Wire``).

Writes to one client are at least ``flush_interval`` apart (``[server]
flush_interval``): what comes sooner after a write is held, and goes out with
whatever else came by then when the interval is up, at once at the end, or when
more than HOLD_LIMIT is held. Each write wakes the client's process, and on a
small machine the engine shares the cores with it: the tiny test model makes
about 800 tokens a second here, and gathering them by 3 ms saves the client most
of its wake-ups (``python -m bench flush``). A stream slower than one token per
interval has each written as it comes; the first write is never held.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from mlx_lama.gateway.proxy import ProxyStream, RawStream, UpstreamError, describe

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


class PacedStream(ProxyStream):
    """The response relaying ``upstream`` through ``body``, at most one write per
    ``flush_interval`` seconds; ``on_close`` runs however it ends."""

    def __init__(
        self,
        upstream: RawStream,
        body: Body,
        *,
        media_type: str,
        on_close: Callable[[int], Awaitable[None]],
        flush_interval: float = 0.0,
    ) -> None:
        content = relayed(upstream, body, flush_interval)
        super().__init__(content, media_type=media_type, on_close=on_close)
        self.flush_interval = flush_interval  # seconds


async def relayed(
    upstream: RawStream, body: Body, flush_interval: float = 0.0
) -> AsyncIterator[bytes]:
    """The client's writes for ``upstream``'s body (see the module docstring). A model
    server that fails ends them with ``body.fail``'s error; so does a bug in ``body``
    (logged), as the gateway's "internal error", rather than a cut-off stream."""
    written = -math.inf  # perf_counter() of the last write
    held = b""  # what waits for the interval to pass
    try:
        while True:
            if held:
                wait = written + flush_interval - time.perf_counter()
                if wait > 0 and len(held) <= HOLD_LIMIT:
                    # Tokens that come meanwhile wake no one; the end, or more than
                    # the hold limit, ends the wait at once.
                    await upstream.gather(wait, HOLD_LIMIT - len(held) + 1)
                    while upstream.buffered and not body.complete and len(held) <= HOLD_LIMIT:
                        if not (data := await upstream.read()):
                            break
                        held += body.feed(data)
                yield held
                held, written = b"", time.perf_counter()
                if body.complete:
                    return
                continue
            data = await upstream.read()
            if not data:
                break
            held += body.feed(data)
            if body.complete:
                if held:
                    yield held
                return
        tail = body.end()
    except UpstreamError as error:
        tail = body.fail(describe(error))
    except Exception as error:
        log.error("unexpected error relaying a stream", exc_info=error)
        tail = body.fail("internal error")
    if held or tail:
        yield held + tail
