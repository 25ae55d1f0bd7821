"""The pure parts of ``gateway/proxy.py``: request-body scrubbing and the SSE relay."""

from __future__ import annotations

import asyncio
import json

import pytest

from mlx_lama.gateway.proxy import RawStream, SseRelay, UpstreamError, backend_body


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


def _relay(lines: list[str], name: str = "my:model") -> tuple[SseRelay, list[bytes]]:
    relay = SseRelay(name)
    out = [event for i, line in enumerate(lines) if (event := relay.feed(line, float(i)))]
    rest = relay.flush()
    return relay, [*out, *([rest] if rest else [])]


def test_relay_rewrites_model_per_event_and_keeps_framing() -> None:
    first = {"model": "default_model", "choices": [{"delta": {"role": "assistant", "content": ""}}]}
    second = {
        "model": "default_model",
        "choices": [{"delta": {"content": 'say "model": "x"'}}],
    }
    lines = [": keepalive 1/3", "", f"data: {json.dumps(first)}", "", f"data: {json.dumps(second)}"]
    lines += ["", "data: [DONE]", ""]
    relay, events = _relay(lines)
    assert events[0] == b": keepalive 1/3\n\n"
    decoded = [json.loads(e.decode()[6:]) for e in events[1:3]]
    assert [d["model"] for d in decoded] == ["my:model", "my:model"]
    assert decoded[1]["choices"][0]["delta"]["content"] == 'say "model": "x"'  # untouched
    assert events[3] == b"data: [DONE]\n\n"
    assert relay.done is True
    assert relay.first_content == 4.0  # the first event with non-empty content


def test_relay_notes_usage_and_a_missing_done() -> None:
    final = {"model": "m", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7}}
    relay, events = _relay([f"data: {json.dumps(final)}"])  # no blank line, no [DONE]
    assert relay.usage == {"prompt_tokens": 5, "completion_tokens": 7}
    assert relay.done is False
    assert json.loads(events[0].decode()[6:])["model"] == "my:model"


def test_relay_escapes_the_client_name_as_json() -> None:
    _relay_obj, events = _relay(['data: {"model": "m", "choices": []}', ""], name='we"ird')
    assert json.loads(events[0].decode()[6:])["model"] == 'we"ird'


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
