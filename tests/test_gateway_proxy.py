"""``gateway/proxy.py``: request-body scrubbing, and ``RawStream`` against a one-shot
server."""

from __future__ import annotations

import asyncio

import pytest

from mlx_lama.gateway.proxy import RawStream, UpstreamError, backend_body, error_text


def test_backend_body_drops_loading_fields_and_sets_the_served_model() -> None:
    body = {
        "model": "client-name",
        "adapters": "/tmp/evil",
        "draft_model": "other/repo",
        "messages": [],
        "max_tokens": 3,
    }
    assert backend_body(body, "tiny") == {"model": "tiny", "messages": [], "max_tokens": 3}
    assert backend_body(body, None) == {"messages": [], "max_tokens": 3}


async def _serve_once(response: bytes) -> tuple[asyncio.Server, int, list[bytes]]:
    """A one-shot HTTP server on loopback answering every request with ``response``."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        seen.append(head + await reader.readexactly(length))
        writer.write(response)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


def test_raw_stream_reads_chunked_lines_split_across_chunks() -> None:
    async def scenario() -> tuple[list[str], list[bytes]]:
        chunks = [b'data: {"a":', b" 1}\n\ndata: [DO", b"NE]\n\n"]
        body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        server, port, seen = await _serve_once(head + body)
        async with server:
            stream = await RawStream.open(
                f"http://127.0.0.1:{port}/v1/chat", {"x": 1}, connect_timeout=5
            )
            lines = [line async for line in stream.aiter_lines()]
            await stream.aclose()
        return lines, seen

    lines, seen = asyncio.run(scenario())
    assert lines == ['data: {"a": 1}', "", "data: [DONE]", ""]
    assert seen[0].startswith(b"POST /v1/chat HTTP/1.1\r\n") and seen[0].endswith(b'{"x":1}')


def test_raw_stream_turns_error_statuses_and_refusals_into_upstream_errors() -> None:
    async def scenario() -> tuple[UpstreamError, UpstreamError]:
        body = b'{"error": {"message": "bad max_tokens"}}'
        head = b"HTTP/1.0 400 Bad Request\r\nContent-Length: %d\r\n\r\n" % len(body)
        server, port, _seen = await _serve_once(head + body)
        async with server:
            with pytest.raises(UpstreamError) as bad:
                await RawStream.open(f"http://127.0.0.1:{port}/", {}, connect_timeout=5)
        with pytest.raises(UpstreamError) as refused:
            await RawStream.open(f"http://127.0.0.1:{port}/", {}, connect_timeout=5)
        return bad.value, refused.value

    bad, refused = asyncio.run(scenario())
    assert (bad.status, str(bad), bad.connect) == (400, "bad max_tokens", False)
    assert refused.connect is True


@pytest.mark.parametrize(
    ("head", "body"),
    [
        (b"HTTP/1.0 200 OK\r\n\r\n", [b"data: a\n\n", b"data: b\n\n"]),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 18\r\n\r\n", [b"data: a\n\ndata: b\n\n"]),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            [b"data: a\n\n", b"data: b\n\n"],
        ),
    ],
)
def test_raw_stream_read_gives_the_body_as_it_comes_then_empty(
    head: bytes, body: list[bytes]
) -> None:
    chunked = b"chunked" in head
    wire = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in body) + b"0\r\n\r\n" if chunked else b""

    async def scenario() -> list[bytes]:
        server, port, _seen = await _serve_once(head + (wire or b"".join(body)))
        async with server:
            stream = await RawStream.open(f"http://127.0.0.1:{port}/", {}, connect_timeout=5)
            pieces = []
            while data := await stream.read():
                pieces.append(data)
            assert await stream.read() == b""  # and again at the end
            await stream.aclose()
        return pieces

    pieces = asyncio.run(scenario())
    assert b"".join(pieces) == b"".join(body)
    if chunked:
        assert pieces == body


def test_a_failure_of_the_work_is_raised_as_itself() -> None:
    """What the work raises reaches the caller by its own type, so `except
    UpstreamError` turns it into a 502."""
    from mlx_lama.gateway.proxy import until_disconnect

    async def never_disconnects() -> dict[str, object]:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def fails() -> dict[str, object]:
        raise UpstreamError("the engine closed the connection mid-answer")

    with pytest.raises(UpstreamError, match="mid-answer"):
        asyncio.run(until_disconnect(never_disconnects, fails))


def test_a_disconnect_cancels_the_work_and_gives_none() -> None:
    from mlx_lama.gateway.proxy import until_disconnect

    cancelled = []

    async def disconnects_soon() -> dict[str, object]:
        await asyncio.sleep(0.01)
        return {"type": "http.disconnect"}

    async def waits() -> str:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return "answered"

    async def scenario() -> tuple[object, bool]:
        result = await until_disconnect(disconnects_soon, waits)
        await asyncio.sleep(0)  # the caller's task goes on: not left cancelled
        return result, asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]

    assert asyncio.run(scenario()) == (None, True)
    assert cancelled == [True]


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ('{"error": {"message": "too long", "type": "x"}}', "too long"),
        ('{"detail": "response_format is unavailable: no tokenizer"}', "response_format is una"),
        (
            '{"detail": [{"loc": ["body", "max_tokens"], "msg": "must be positive"}]}',
            "body.max_tokens: must be positive",
        ),
        ("Internal Server Error", "Internal Server Error"),
        ('{"error": "busy"}', "busy"),
    ],
)
def test_an_engines_error_body_becomes_its_message(body: str, said: str) -> None:
    assert error_text(body).startswith(said)
