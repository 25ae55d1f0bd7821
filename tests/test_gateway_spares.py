"""Connections opened ahead (``gateway/spares.py``) as ``RawStream.open`` uses them,
against a small HTTP server on loopback that answers each request and closes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from mlx_lama.gateway.proxy import RawStream
from mlx_lama.gateway.spares import Spares

ANSWER = b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: [DONE]\n\n"


@dataclass
class Server:
    """Counts connections; ``drop`` of them are closed unanswered once a request came."""

    drop: int = 0
    accepted: int = 0
    requests: list[bytes] = field(default_factory=list)
    idle: list[asyncio.StreamWriter] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.idle.append(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        self.idle.remove(writer)
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        self.requests.append(await reader.readexactly(length))
        if self.drop:
            self.drop -= 1
        else:
            writer.write(ANSWER)
            await writer.drain()
        writer.close()


async def stream_once(port: int, spares: Spares, body: dict[str, int]) -> list[str]:
    stream = await RawStream.open(
        f"http://127.0.0.1:{port}/v1/chat/completions", body, connect_timeout=5, spares=spares
    )
    lines = [line async for line in stream.aiter_lines()]
    await stream.aclose()
    return lines


async def settle() -> None:
    for _ in range(20):  # let background connects and closes happen
        await asyncio.sleep(0.005)


async def finish(spares: Spares, server: Server) -> None:
    """Close the spares, and the server's ends of them, before the loop ends."""
    await spares.aclose()
    await settle()
    for writer in server.idle:
        writer.close()
    await settle()


def test_a_stream_leaves_a_spare_that_the_next_request_is_sent_on() -> None:
    async def scenario() -> tuple[int, int, int]:
        server = Server()
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        spares = Spares()
        async with listener:
            assert await stream_once(port, spares, {"n": 1}) == ["data: [DONE]", ""]
            await settle()
            ready_before = server.accepted  # the first request's, and one spare
            await stream_once(port, spares, {"n": 2})
            await settle()
            accepted = server.accepted
            await finish(spares, server)
        return ready_before, accepted, len(server.requests)

    ready_before, accepted, requests = asyncio.run(scenario())
    assert ready_before == 2
    assert accepted == 3  # the second request needed no connection of its own
    assert requests == 2


def test_spares_the_server_closed_are_not_used() -> None:
    async def scenario() -> tuple[list[str], int]:
        server = Server()
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        spares = Spares()
        async with listener:
            await stream_once(port, spares, {"n": 1})
            await settle()
            for writer in server.idle:  # as a server that stops does
                writer.close()
            await settle()
            lines = await stream_once(port, spares, {"n": 2})
            await finish(spares, server)
        return lines, len(server.requests)

    lines, requests = asyncio.run(scenario())
    assert lines == ["data: [DONE]", ""]
    assert requests == 2


def test_a_spare_closed_unanswered_is_retried_once_on_a_fresh_connection() -> None:
    async def scenario() -> tuple[list[str], list[bytes]]:
        server = Server()
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        spares = Spares()
        async with listener:
            await stream_once(port, spares, {"n": 1})
            await settle()
            server.drop = 1  # the spare is closed as the request arrives
            lines = await stream_once(port, spares, {"n": 2})
            await finish(spares, server)
        return lines, server.requests

    lines, requests = asyncio.run(scenario())
    assert lines == ["data: [DONE]", ""]
    assert requests == [b'{"n":1}', b'{"n":2}', b'{"n":2}']


def test_at_most_so_many_spares_and_none_after_close() -> None:
    async def scenario() -> tuple[int, bool]:
        server = Server()
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        spares = Spares(most=2)
        async with listener:
            for _ in range(5):
                spares.refill("127.0.0.1", port, limit=2**16, timeout=5)
            await settle()
            accepted = server.accepted
            await spares.aclose()
            spares.refill("127.0.0.1", port, limit=2**16, timeout=5)
            await settle()
            taken = spares.take("127.0.0.1", port)
            await finish(spares, server)
        return accepted, taken is None

    accepted, none_left = asyncio.run(scenario())
    assert accepted == 2
    assert none_left


def test_a_stream_closed_before_its_answer_ended_leaves_no_spare() -> None:
    async def scenario() -> int:
        server = Server()
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        spares = Spares()
        async with listener:
            stream = await RawStream.open(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                {"n": 1},
                connect_timeout=5,
                spares=spares,
            )
            await stream.aclose()  # as when the client goes away mid-stream
            await settle()
            accepted = server.accepted
            await finish(spares, server)
        return accepted

    assert asyncio.run(scenario()) == 1
