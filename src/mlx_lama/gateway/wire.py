"""One connection to a model server, read as the token streams read it.

Why not asyncio's StreamReader: per streamed token it runs seven Python calls
(the protocol's ``data_received``, a property, ``feed_data``, the waiter, the
read, its wait and its resume check), which on a small machine cost the engine
a few per cent of its CPU. :class:`Wire` keeps the part ``RawStream`` uses
(``readuntil``, ``readexactly`` and ``read``, with the same errors) in two: its
``data_received`` and the read.

Opened with :func:`connect` by ``RawStream.open`` and by ``spares.py``; never
shared between two streams. No HTTP here: ``RawStream`` parses the answer.

:meth:`Wire.divert` hands what arrives to a callback instead, straight from
``data_received`` (``push.py`` relays a token stream that way, with no task
woken per token).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Wire(asyncio.Protocol):
    """A connected socket's incoming bytes, buffered up to twice ``limit`` (beyond that
    the transport stops reading until the reader takes them; ``readuntil`` looks as
    far as ``limit`` for its separator). Use from one task."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._pieces: list[bytes] = []  # what came and was not read yet, as it came
        self._size = 0  # their bytes
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._error: BaseException | None = None  # the connection broke
        self._paused = False
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self._arrived: Callable[[bytes], None] | None = None  # set by divert
        self._ended: Callable[[BaseException | None], None] | None = None

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP connection's

    def data_received(self, data: bytes) -> None:
        if self._arrived is not None:
            self._arrived(data)
            return
        self._pieces.append(data)
        self._size += len(data)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        if self._size > 2 * self._limit and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        if exc is not None:
            self._error = exc
        self._wake()
        if not self._closed.done():
            self._closed.set_result(None)

    def _wake(self) -> None:
        if self._ended is not None:
            ended, self._ended, self._arrived = self._ended, None, None
            ended(self._error)
            return
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- reading

    @property
    def alive(self) -> bool:
        """Neither side has closed it, and it has not broken."""
        transport = self.transport
        return not (self._eof or transport is None or transport.is_closing())

    async def read(self) -> bytes:
        """What has come since the last read, waiting for some; b"" at the end."""
        pieces = self._pieces
        if not pieces:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            # _wait, inline: this runs once per token.
            self._waiter = waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
            if not pieces:
                return await self.read()
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        self._size = 0
        if self._paused:
            self._resume()
        return data

    async def readuntil(self, separator: bytes) -> bytes:
        """The bytes up to and with ``separator``, as StreamReader's: LimitOverrunError
        past ``limit``, IncompleteReadError at the end."""
        while (at := self._joined().find(separator)) < 0:
            if self._size > self._limit:
                raise asyncio.LimitOverrunError("separator not found within the limit", 0)
            await self._more()
        return self._take(at + len(separator))

    async def readexactly(self, size: int) -> bytes:
        """``size`` bytes, as StreamReader's: IncompleteReadError at an early end."""
        while self._size < size:
            await self._more()
        if not size:
            return b""
        self._joined()
        return self._take(size)

    def _joined(self) -> bytes:
        """What came, as one piece (kept so, until more comes)."""
        pieces = self._pieces
        if len(pieces) > 1:
            pieces[:] = [b"".join(pieces)]
        return pieces[0] if pieces else b""

    async def _more(self) -> None:
        if self._error is not None:
            raise self._error
        if self._eof:
            raise asyncio.IncompleteReadError(self._joined(), None)
        if self._paused:
            self._resume()
        await self._wait()

    def _take(self, size: int) -> bytes:
        """The first ``size`` bytes of the one piece there is."""
        whole = self._pieces[0]
        data, rest = whole[:size], whole[size:]
        self._pieces[:] = [rest] if rest else []
        self._size = len(rest)
        if self._paused and self._size <= 2 * self._limit:
            self._resume()
        return data

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _resume(self) -> None:
        self._paused = False
        if self.transport is not None:
            self.transport.resume_reading()

    # -- handing on

    def divert(
        self, arrived: Callable[[bytes], None], ended: Callable[[BaseException | None], None]
    ) -> None:
        """From now on call ``arrived`` with the bytes as they come (those already here
        first, at once) instead of keeping them for the reads, and ``ended`` once at the
        end (with what broke the connection, None for a clean close). Both run in the
        event loop's callbacks: they must not block, nor raise."""
        data = b"".join(self._pieces)
        self._pieces.clear()
        self._size = 0
        if self._paused:
            self._resume()
        self._arrived, self._ended = arrived, ended
        if data:
            arrived(data)
        if self._eof and self._ended is not None:
            self._wake()

    def pause(self) -> None:
        """Stop reading from the socket (until :meth:`resume`): the diverted bytes'
        receiver cannot take more yet."""
        if not self._paused and self.transport is not None and not self.transport.is_closing():
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused:
            self._resume()

    # -- writing and closing

    def write(self, data: bytes) -> None:
        """Send ``data`` (buffered by the transport while the socket is full: requests
        are small beside what a server sends back)."""
        assert self.transport is not None
        self.transport.write(data)

    async def aclose(self) -> None:
        """Close the connection and wait until it is."""
        if self.transport is not None:
            self.transport.close()
        await asyncio.shield(self._closed)


async def connect(host: str, port: int, *, limit: int) -> Wire:
    """A :class:`Wire` connected to ``host:port``; OSError when it cannot be."""
    loop = asyncio.get_running_loop()
    transport, wire = await loop.create_connection(lambda: Wire(limit), host, port)
    # uvloop may call connection_made only after create_connection has returned.
    wire.transport = transport
    return wire
