"""One connection to a model server, read as the token streams read it.

Why not asyncio's StreamReader: per streamed token it runs seven Python calls
(the protocol's ``data_received``, a property, ``feed_data``, the waiter, the
read, its wait and its resume check), which on a small machine cost the engine
a few per cent of its CPU. :class:`Wire` keeps the part ``RawStream`` uses
(``readuntil``, ``readexactly`` and ``read``, with the same errors) in two: its
``data_received`` and the read.

Opened with :func:`connect` by ``RawStream.open`` and by ``spares.py``; never
shared between two streams. No HTTP here: ``RawStream`` parses the answer.
"""

from __future__ import annotations

import asyncio


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
        self._gathered: asyncio.Future[None] | None = None  # set by gather
        self._gather_size = 0

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP connection's

    def data_received(self, data: bytes) -> None:
        self._pieces.append(data)
        self._size += len(data)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        gathered = self._gathered
        if gathered is not None and self._size >= self._gather_size and not gathered.done():
            gathered.set_result(None)
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
        gathered = self._gathered
        if gathered is not None and not gathered.done():
            gathered.set_result(None)
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

    @property
    def buffered(self) -> bool:
        """Bytes have come that were not read yet."""
        return bool(self._pieces)

    async def gather(self, timeout: float, size: int) -> None:
        """Wait until ``size`` bytes wait to be read, the connection ends, or ``timeout``
        seconds pass, whichever comes first. Takes nothing; what comes meanwhile wakes
        no one (a stream holding its writes for a while gathers its tokens so)."""
        if self._size >= size or self._eof or self._error is not None:
            return
        loop = asyncio.get_running_loop()
        self._gathered = gathered = loop.create_future()
        self._gather_size = size
        timer = loop.call_later(timeout, _settle, gathered)
        try:
            await gathered
        finally:
            timer.cancel()
            self._gathered = None

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


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
