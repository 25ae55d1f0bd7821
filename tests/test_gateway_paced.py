"""``gateway/paced.py``: a token stream relayed at a bounded pace through ASGI's send.

A real uvicorn serves a small ASGI app that relays a stand-in model server's
SSE stream (HTTP/1.0, to the close, as mlx_lm.server answers, or chunked) with
``PacedStream``, under both of uvicorn's HTTP protocols (httptools, the
gateway's, and h11): both must give the client the same bytes, however the
model server's writes fall, and the same error events when it fails; a client
that leaves closes the model server's connection; a client that stops reading
stops the reading from the model server. Tokens that come within the flush
interval of the last write go out together.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
import uvloop

from mlx_lama.gateway.ollama_answers import StreamTranslator
from mlx_lama.gateway.paced import HOLD_LIMIT, Body, PacedStream
from mlx_lama.gateway.proxy import EARLY_END, MAX_LINE, STOPPED, RawStream
from mlx_lama.gateway.relay import NdjsonBody
from mlx_lama.gateway.sse import SseBody, SseRelay
from mlx_lama.gateway.wire import Wire

NAME = "my:model"
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def event(i: int, pad: str = "") -> bytes:
    chunk = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": "default_model",
        "choices": [{"index": 0, "delta": {"content": f"tok{i}{pad}"}}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"
HEAD = b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
CHUNKED_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def expected(raw: bytes) -> bytes:
    """What the gateway's line-by-line relay makes of a whole upstream body."""
    relay = SseRelay(NAME)
    out = [e for line in raw.split(b"\n") if (e := relay.feed(line.decode(), 0.0))]
    return b"".join(out)


@dataclass
class Upstream:
    """A stand-in model server on loopback: reads one request, then runs ``script``."""

    script: Script
    head: bytes = HEAD
    port: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # the gateway hung up
    finished: asyncio.Event = field(default_factory=asyncio.Event)  # the script has run

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            writer.write(self.head)
            await self.script(reader, writer)
            self.finished.set()
        except (OSError, asyncio.IncompleteReadError):
            self.closed.set()
        finally:
            writer.close()


@dataclass
class Gateway:
    """uvicorn serving one route that relays ``upstream`` with ``PacedStream``."""

    upstream: Upstream
    http: str
    ndjson: bool = False  # Ollama's lines (as /api/chat answers), else OpenAI's events
    flush_interval: float = 0.0
    responses: list[PacedStream] = field(default_factory=list)
    upstreams: list[RawStream] = field(default_factory=list)
    closes: int = 0
    port: int = 0

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        while (await receive()).get("more_body"):
            pass
        url = f"http://127.0.0.1:{self.upstream.port}/v1/chat/completions"
        upstream = await RawStream.open(url, {"stream": True}, connect_timeout=5)
        self.upstreams.append(upstream)

        async def on_close(status: int) -> None:
            self.closes += 1
            await upstream.aclose()

        body: Body = SseBody(SseRelay(NAME), upstream)
        if self.ndjson:
            now = time.monotonic()
            body = NdjsonBody(upstream, StreamTranslator(NAME, "chat", now, now))
        response = PacedStream(
            upstream,
            body,
            media_type="text/plain",
            on_close=on_close,
            flush_interval=self.flush_interval,
        )
        self.responses.append(response)
        await response(scope, receive, send)


@contextlib.asynccontextmanager
async def serving(
    script: Script,
    http: str,
    ndjson: bool = False,
    head: bytes = HEAD,
    flush_interval: float = 0.0,
) -> AsyncIterator[Gateway]:
    upstream = Upstream(script, head)
    model_server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    upstream.port = model_server.sockets[0].getsockname()[1]
    gateway = Gateway(upstream, http, ndjson, flush_interval)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    gateway.port = sock.getsockname()[1]
    config = uvicorn.Config(
        gateway.app, http=http, interface="asgi3", lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        yield gateway
    finally:
        server.should_exit = True
        await task
        sock.close()
        model_server.close()
        await model_server.wait_closed()


async def ask(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding: chunked" in head.lower()
    return reader, writer


async def dechunk(reader: asyncio.StreamReader) -> bytes:
    """A chunked body to its end (the terminating chunk must come)."""
    return b"".join([chunk async for chunk in chunks(reader)])


async def chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """A chunked body's chunks as they come: the gateway's writes, one by one."""
    while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
        yield (await reader.readexactly(size + 2))[:-2]
    assert await reader.readexactly(2) == b"\r\n"


async def answer(
    script: Script, http: str, ndjson: bool = False, head: bytes = HEAD
) -> tuple[bytes, Gateway]:
    async with serving(script, http, ndjson, head) as gateway:
        reader, writer = await ask(gateway.port)
        try:
            body = await asyncio.wait_for(dechunk(reader), 30)
        finally:
            writer.close()
        return body, gateway


End = Callable[[asyncio.StreamWriter], None]


def writes(pieces: list[bytes], end: End | None = None) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.002)
        if end is not None:
            end(writer)

    return script


BODY = b"".join(event(i) for i in range(20)) + DONE
WAYS = {
    "event by event": [event(i) for i in range(20)] + [DONE],
    "split inside events": [BODY[i : i + 37] for i in range(0, len(BODY), 37)],
    "several events a write": [BODY[: len(BODY) // 3], BODY[len(BODY) // 3 :]],
    "byte by byte, then the rest": [BODY[i : i + 1] for i in range(300)] + [BODY[300:]],
}


@pytest.mark.parametrize("way", sorted(WAYS))
def test_the_body_is_the_relays_however_the_model_servers_writes_fall(way: str) -> None:
    async def scenario() -> dict[str, bytes]:
        got = {}
        for http in ("httptools", "h11"):
            body, gateway = await answer(writes(WAYS[way]), http)
            got[http] = body
            assert gateway.closes == 1
        return got

    got = uvloop.run(scenario())
    assert got == {"httptools": expected(BODY), "h11": expected(BODY)}
    assert expected(BODY).count(b'"model":"my:model"') == 20


def _error(body: bytes) -> str:
    last = body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    assert last.startswith(b"data: ") and DONE not in body
    message: str = json.loads(last[6:])["error"]["message"]
    return message


@pytest.mark.parametrize(
    ("end", "message"),
    [
        (lambda writer: writer.close(), EARLY_END),  # closed before [DONE]
        (lambda writer: writer.transport.abort(), None),  # reset: closed or broken
    ],
    ids=["closed early", "reset"],
)
def test_a_model_server_that_dies_mid_stream_ends_the_stream_with_an_error_event(
    end: End, message: str | None
) -> None:
    pieces = [event(i) for i in range(5)]

    async def scenario() -> dict[str, bytes]:
        got = {}
        for http in ("httptools", "h11"):
            body, _gateway = await answer(writes(pieces, end), http)
            got[http] = body
        return got

    got = uvloop.run(scenario())
    assert got["httptools"] == got["h11"]
    assert got["h11"].startswith(expected(b"".join(pieces)))
    assert _error(got["h11"]) in ((message,) if message else (EARLY_END, STOPPED))


def test_an_endless_line_from_the_model_server_ends_the_stream_with_an_error_event() -> None:
    pieces = [event(0), b"data: " + b"x" * (MAX_LINE + 10)]

    async def scenario() -> bytes:
        body, _gateway = await answer(writes(pieces), "httptools")
        return body

    body = uvloop.run(scenario())
    assert body.startswith(expected(event(0)))
    assert _error(body) == "model server sent an oversized event"


def test_a_client_that_leaves_mid_stream_closes_the_model_servers_connection() -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        i = 0
        while True:  # until the gateway hangs up (a write then fails)
            writer.write(event(i))
            await writer.drain()
            i += 1
            await asyncio.sleep(0.005)

    async def scenario() -> int:
        async with serving(endless, "httptools") as gateway:
            reader, writer = await ask(gateway.port)
            await reader.readuntil(b'"model":"my:model"')
            writer.close()
            await asyncio.wait_for(gateway.upstream.closed.wait(), 10)
            while not gateway.closes:
                await asyncio.sleep(0.01)
            return gateway.closes

    assert uvloop.run(scenario()) == 1


@pytest.mark.parametrize("flush_interval", [0.0, 0.05])
def test_a_client_that_stops_reading_stops_the_reading_from_the_model_server(
    flush_interval: float,
) -> None:
    pad = "x" * 1000
    count = 40_000  # about 40 MB: more than the sockets' buffers on both hops hold

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for i in range(count):
            writer.write(event(i, pad))
            if writer.transport.get_write_buffer_size() > 2**20:
                await writer.drain()
        writer.write(DONE)
        await writer.drain()

    async def scenario() -> tuple[bool, bytes]:
        async with serving(flood, "httptools", flush_interval=flush_interval) as gateway:
            reader, writer = await ask(gateway.port)
            try:
                while not gateway.responses:
                    await asyncio.sleep(0.01)
                wire: Wire = gateway.upstreams[0]._wire
                # The client reads nothing meanwhile: the gateway stops reading while
                # the model server still has most of its answer to write.
                finished = gateway.upstream.finished
                while not (wire._paused or finished.is_set()):
                    await asyncio.sleep(0.001)
                paused = wire._paused and not finished.is_set()
                body = await asyncio.wait_for(dechunk(reader), 120)
            finally:
                writer.close()
            return paused, body

    paused, body = uvloop.run(scenario())
    assert paused
    assert body.count(b'"model":"my:model"') == count
    assert body.endswith(DONE) and b"tok%d%s" % (count - 1, pad.encode()) in body


def _lines(body: bytes) -> list[dict[str, Any]]:
    """NDJSON lines without what differs from run to run (times)."""
    lines = [json.loads(line) for line in body.splitlines()]
    for line in lines:
        for key in [k for k in line if k == "created_at" or k.endswith("_duration")]:
            del line[key]
    return lines


@pytest.mark.parametrize("way", ["event by event", "split inside events"])
def test_ollama_lines_are_the_same_under_both_protocols_and_end_at_done(way: str) -> None:
    async def held_open(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await writes(WAYS[way])(reader, writer)
        await reader.read()  # the answer is whole, but the connection stays open

    async def scenario() -> dict[str, bytes]:
        got = {}
        for http in ("httptools", "h11"):
            body, _gateway = await answer(held_open, http, ndjson=True)
            got[http] = body
        return got

    got = uvloop.run(scenario())
    lines, other = _lines(got["httptools"]), _lines(got["h11"])
    assert lines == other
    assert [line["message"]["content"] for line in lines[:-1]] == [f"tok{i}" for i in range(20)]
    assert lines[-1]["done"] is True and lines[-1]["model"] == NAME


def test_ollama_lines_end_with_an_error_line_when_the_model_server_dies() -> None:
    async def scenario() -> bytes:
        script = writes([event(i) for i in range(3)], lambda writer: writer.close())
        body, _gateway = await answer(script, "httptools", ndjson=True)
        return body

    lines = _lines(uvloop.run(scenario()))
    assert [line.get("message", {}).get("content") for line in lines[:3]] == [
        "tok0",
        "tok1",
        "tok2",
    ]
    assert lines[3:] == [{"error": EARLY_END}]


def framed(pieces: list[bytes]) -> bytes:
    """``pieces`` as chunks of a chunked body (one with an extension), and its end."""
    chunks = [
        b"%x%s\r\n%s\r\n" % (len(p), b";x=1" if i == 1 else b"", p) for i, p in enumerate(pieces)
    ]
    return b"".join(chunks) + b"0\r\n\r\n"


CHUNKED = framed([event(i) for i in range(20)] + [DONE])
CHUNKED_WAYS = {
    "a chunk a write": [framed([event(i)])[:-5] for i in range(20)] + [framed([DONE])],
    "split anywhere": [CHUNKED[i : i + 29] for i in range(0, len(CHUNKED), 29)],
    "all at once": [CHUNKED],
}


@pytest.mark.parametrize("way", sorted(CHUNKED_WAYS))
def test_a_chunked_body_is_relayed_however_its_chunks_fall(way: str) -> None:
    async def scenario() -> dict[str, bytes]:
        got = {}
        for http in ("httptools", "h11"):
            script = writes(CHUNKED_WAYS[way])
            body, _gateway = await answer(script, http, head=CHUNKED_HEAD)
            got[http] = body
        return got

    got = uvloop.run(scenario())
    assert got == {"httptools": expected(BODY), "h11": expected(BODY)}


@pytest.mark.parametrize(
    "pieces",
    [[CHUNKED[:700]], [framed([event(0)])[:-5], b"zz\r\n"]],
    ids=["cut inside a chunk", "not a chunk size"],
)
def test_a_broken_chunked_body_ends_the_stream_with_an_error_event(pieces: list[bytes]) -> None:
    async def scenario() -> dict[str, bytes]:
        got = {}
        for http in ("httptools", "h11"):
            script = writes(pieces, lambda writer: writer.close())
            body, _gateway = await answer(script, http, head=CHUNKED_HEAD)
            got[http] = body
        return got

    got = uvloop.run(scenario())
    assert got["httptools"] == got["h11"]
    assert got["h11"].startswith(expected(event(0)))
    assert _error(got["h11"]) == STOPPED


@pytest.mark.parametrize("method", ["feed", "end"])
def test_a_bug_in_the_relaying_ends_the_stream_with_the_gateways_error(
    method: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: SseBody, *args: Any) -> bytes:
        raise RuntimeError("a bug")

    monkeypatch.setattr(SseBody, method, broken)
    body, gateway = uvloop.run(answer(writes([event(0)], lambda w: w.close()), "httptools"))
    assert gateway.closes == 1
    assert _error(body) == "internal error"  # not the model server's, and no hang
    assert "unexpected error relaying a stream" in caplog.text


def test_a_kept_alive_connection_carries_one_paced_answer_after_another() -> None:
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    )

    async def scenario() -> tuple[list[bytes], int]:
        async with serving(writes(WAYS["event by event"]), "httptools") as gateway:
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            bodies = []
            try:
                for _ in range(2):  # the same connection: the first answer ended cleanly
                    writer.write(request)
                    head = await reader.readuntil(b"\r\n\r\n")
                    assert head.startswith(b"HTTP/1.1 200 ") and b"connection: close" not in head
                    bodies.append(await asyncio.wait_for(dechunk(reader), 30))
            finally:
                writer.close()
            return bodies, len(gateway.responses)

    bodies, responses = uvloop.run(scenario())
    assert bodies == [expected(BODY)] * 2 and responses == 2


# -- the flush interval


async def gathered(
    script: Script, flush_interval: float, ndjson: bool = False, seen: asyncio.Event | None = None
) -> list[bytes]:
    """The chunks (the gateway's writes) of one answer; ``seen`` is set once the
    client has the first."""
    async with serving(script, "httptools", ndjson, flush_interval=flush_interval) as gateway:
        reader, writer = await ask(gateway.port)
        got = []
        try:
            async with asyncio.timeout(30):
                async for chunk in chunks(reader):
                    got.append(chunk)
                    if seen is not None:
                        seen.set()
        finally:
            writer.close()
        return got


def after_the_first(pieces: list[bytes]) -> tuple[Script, asyncio.Event]:
    """The first piece, then (once the event says the client has it) the rest as
    ``writes`` sends them."""
    seen = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(pieces[0])
        await asyncio.wait_for(seen.wait(), 10)
        await writes(pieces[1:])(reader, writer)

    return script, seen


def test_tokens_within_the_flush_interval_go_out_together_and_the_end_at_once() -> None:
    # An hour's interval: all but the first event wait for the end, which is not held
    # (else the 30 s wait for the body would fail).
    script, seen = after_the_first(WAYS["event by event"])
    got = uvloop.run(gathered(script, 3600.0, seen=seen))
    assert got == [expected(event(0)), expected(BODY)[len(expected(event(0))) :]]


def test_ollama_lines_within_the_flush_interval_go_out_together() -> None:
    script, seen = after_the_first(WAYS["event by event"])
    got = uvloop.run(gathered(script, 3600.0, ndjson=True, seen=seen))
    assert len(got) == 2
    assert json.loads(got[0])["message"]["content"] == "tok0"
    lines = _lines(b"".join(got))
    assert [line["message"]["content"] for line in lines[:-1]] == [f"tok{i}" for i in range(20)]
    assert lines[-1]["done"] is True


def test_what_is_held_goes_out_when_the_flush_interval_is_up() -> None:
    seen = asyncio.Event()  # the client has the second event

    async def waits_for_the_client(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(event(0) + event(1))  # one read: the first write, nothing held
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(event(2))  # within the interval: held until the timer writes it
        await writer.drain()
        await asyncio.wait_for(seen.wait(), 10)
        writer.write(DONE)

    async def scenario() -> list[bytes]:
        async with serving(waits_for_the_client, "httptools", flush_interval=0.2) as gateway:
            reader, writer = await ask(gateway.port)
            got = []
            try:
                async for chunk in chunks(reader):
                    got.append(chunk)
                    if b"tok2" in chunk:
                        seen.set()
            finally:
                writer.close()
            assert gateway.upstream.finished.is_set()
            return got

    got = uvloop.run(scenario())
    assert got == [expected(event(0) + event(1)), expected(event(2)), expected(DONE)]


def test_tokens_slower_than_the_flush_interval_are_written_as_they_come() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for i in range(5):
            writer.write(event(i))
            await writer.drain()
            await asyncio.sleep(0.1)
        writer.write(DONE)

    got = uvloop.run(gathered(slow, 0.005))
    assert got == [expected(event(i)) for i in range(5)] + [expected(DONE)]


def test_more_than_the_hold_limit_is_written_without_waiting() -> None:
    pad = "x" * 1000
    count = 3 * HOLD_LIMIT // 1000
    sent = b"".join(event(i, pad) for i in range(count))
    enough = asyncio.Event()  # the client has two limits' worth
    first = asyncio.Event()  # the client has the first write: the rest is held

    async def waits_for_the_client(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(event(0, pad))
        await asyncio.wait_for(first.wait(), 10)
        for i in range(1, count):
            writer.write(event(i, pad))
            await writer.drain()
        # An hour's interval: without the limit all but the first read would wait for
        # the end, which waits for the client.
        await asyncio.wait_for(enough.wait(), 10)
        writer.write(DONE)

    async def scenario() -> bytes:
        async with serving(waits_for_the_client, "httptools", flush_interval=3600.0) as gateway:
            reader, writer = await ask(gateway.port)
            got = b""
            try:
                async for chunk in chunks(reader):
                    got += chunk
                    first.set()
                    if len(got) > 2 * HOLD_LIMIT:
                        enough.set()
            finally:
                writer.close()
            assert gateway.upstream.finished.is_set()
            return got

    assert uvloop.run(scenario()) == expected(sent + DONE)
