"""``gateway/wire.py`` against a server on loopback, on asyncio's own event loop and on
uvloop (which the gateway runs on): reads as StreamReader's, its errors, the pause
when the reader falls behind, and the close."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import uvloop

from mlx_lama.gateway.wire import connect

Loop = Callable[[Coroutine[Any, Any, Any]], Any]
LOOPS: dict[str, Loop] = {"asyncio": asyncio.run, "uvloop": uvloop.run}


async def _server(
    talk: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await talk(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Loop:
    return LOOPS[request.param]


def test_reads_are_stream_readers(run: Loop) -> None:
    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readexactly(4) == b"ping"
        for piece in (b"HE", b"AD\r\n\r\nbo", b"dy", b"tail"):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)

    async def scenario() -> list[bytes]:
        server, port = await _server(talk)
        async with server:
            wire = await connect("127.0.0.1", port, limit=1024)
            wire.write(b"ping")
            got = [await wire.readuntil(b"\r\n\r\n"), await wire.readexactly(3)]
            assert await wire.readexactly(0) == b""
            while data := await wire.read():
                got.append(data)
            got.append(await wire.read())  # and again at the end
            assert not wire.alive
            with pytest.raises(asyncio.IncompleteReadError):
                await wire.readexactly(1)
            await wire.aclose()
        return got

    assert run(scenario()) == [b"HEAD\r\n\r\n", b"bod", b"y", b"tail", b""]


def test_a_separator_beyond_the_limit_is_a_limit_overrun(run: Loop) -> None:
    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"x" * 100)
        await writer.drain()
        await reader.read()

    async def scenario() -> None:
        server, port = await _server(talk)
        async with server:
            wire = await connect("127.0.0.1", port, limit=10)
            with pytest.raises(asyncio.LimitOverrunError):
                await wire.readuntil(b"\n")
            await wire.aclose()

    run(scenario())


def test_a_reader_behind_pauses_the_socket_and_loses_nothing(run: Loop) -> None:
    sent = b"".join(b"%06d" % n for n in range(50_000))  # 300 kB, limit 1 kB

    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(sent)
        await writer.drain()

    async def scenario() -> tuple[bytes, bool]:
        server, port = await _server(talk)
        async with server:
            wire = await connect("127.0.0.1", port, limit=1024)
            await asyncio.sleep(0.1)  # the server writes all it can meanwhile
            paused = wire._paused
            got = b""
            while data := await wire.read():
                got += data
            await wire.aclose()
        return got, paused

    got, paused = run(scenario())
    assert got == sent
    assert paused


def test_a_closed_idle_connection_is_not_alive_and_close_waits(run: Loop) -> None:
    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pass  # closes at once, as a server that stops does

    async def scenario() -> tuple[bool, bool]:
        server, port = await _server(talk)
        async with server:
            wire = await connect("127.0.0.1", port, limit=1024)
            before = wire.alive
            await asyncio.sleep(0.05)
            after = wire.alive
            await wire.aclose()
            await wire.aclose()  # twice is fine
        return before, after

    assert run(scenario()) == (True, False)
