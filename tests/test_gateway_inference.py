"""The token streams of ``gateway/inference.py`` from a stub engine, as plain ASGI.

The stub answers as ``mlx_lm.server`` does (HTTP/1.0, one write per event, the
body ended by the close), or stops mid-answer. What the client gets is compared
with what the backend sent: SSE byte for byte with ``model`` rewritten, NDJSON
chunk by chunk; a stream cut short ends with an error, and every stream is
counted with its tokens and first token.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlx_lama import paths
from mlx_lama.gateway.core import Gateway
from mlx_lama.gateway.inference import Call, Handler, chat, generate, openai
from mlx_lama.gateway.paced import PacedStream
from mlx_lama.gateway.proxy import EARLY_END
from mlx_lama.gateway.security import Message, Scope
from mlx_lama.gateway.server import prepare

_HEAD = b"HTTP/1.0 200 OK\r\nContent-type: text/event-stream\r\n\r\n"


def _event(delta: dict[str, Any], finish: str | None = None) -> bytes:
    event = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "default_model",
        "choices": [{"index": 0, "finish_reason": finish, "delta": delta}],
    }
    return b"data: %s\n\n" % json.dumps(event).encode()


EVENTS = [
    b": keepalive 1/1\n\n",
    _event({"role": "assistant", "content": "Hel"}),
    _event({"role": "assistant", "content": 'lo "model": \u00fc'}),
    _event({"role": "assistant", "content": "\n!"}),
    _event({"role": "assistant"}, "length"),
    b'data: {"model": "default_model", "choices": [], '
    b'"usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}}\n\n',
    b"data: [DONE]\n\n",
]


async def _stub(pieces: list[bytes], answered: asyncio.Event) -> tuple[asyncio.Server, int]:
    """An engine answering a request with ``pieces``, one write each, then closing."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]))
            for piece in [_HEAD, *pieces]:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.001)
        except ConnectionError:
            pass  # the gateway stopped reading after an error event
        finally:
            writer.close()
            await writer.wait_closed()
            answered.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _stream(
    tmp_path: Path, path: str, body: dict[str, Any], pieces: list[bytes], settings: str = ""
) -> Any:
    """The body the client gets for ``body`` on ``path``, and the gateway (whose
    manifest has ``settings`` in its ``[server]`` table); the response is kept in
    ``RESPONSES``."""

    async def scenario() -> tuple[bytes, Gateway]:
        answered = asyncio.Event()
        server, port = await _stub(pieces, answered)
        manifest = tmp_path / "mlxlama.toml"
        manifest.write_text(
            f'version = 1\n\n[models."my:model"]\nbackend = "external"\n'
            f'url = "http://127.0.0.1:{port}/v1"\n\n[server]\n{settings}\n',
            encoding="utf-8",
        )
        gateway = prepare(manifest, cache_dir=paths.hf_hub_cache())
        gateway.client = httpx.AsyncClient(trust_env=False)
        sent: list[bytes] = []

        async def receive() -> Message:
            await asyncio.Event().wait()  # the client stays
            raise AssertionError("unreachable")

        async def send(message: Message) -> None:
            sent.append(message.get("body", b""))

        scope: Scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}}
        try:
            async with server:
                call = Call(gateway, path, body, receive, time.monotonic())
                response = await HANDLERS[path](call)
                RESPONSES.append(response)
                await response(scope, receive, send)
                await answered.wait()
        finally:
            await gateway.client.aclose()
        return b"".join(sent), gateway

    return asyncio.run(scenario())


RESPONSES: list[Any] = []
HANDLERS: dict[str, Handler] = {
    "/api/chat": chat,
    "/api/generate": generate,
    "/v1/chat/completions": openai,
    "/v1/completions": openai,
}
CHAT = {"model": "my:model", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def test_sse_passes_every_event_with_the_clients_model_name(tmp_path: Path) -> None:
    out, gateway = _stream(tmp_path, "/v1/chat/completions", CHAT, EVENTS)
    expected = b"".join(EVENTS).replace(b'"model": "default_model"', b'"model":"my:model"')
    assert out == expected
    stats = gateway.activity.model("my:model")
    assert (stats["requests"], stats["prompt_tokens"], stats["completion_tokens"]) == (1, 4, 3)
    assert stats["ttft_p50"] is not None


@pytest.mark.parametrize("cut", [b"", b'data: {"model": "default_model", "choi'])
def test_an_sse_stream_cut_short_ends_with_an_error_event(tmp_path: Path, cut: bytes) -> None:
    out, gateway = _stream(tmp_path, "/v1/chat/completions", CHAT, [*EVENTS[:3], cut])
    events = out.split(b"\n\n")
    assert b"[DONE]" not in out
    if cut:  # the partial event comes through as it was, then the error
        assert events[3] == cut.replace(b'"model": "default_model"', b'"model":"my:model"')
    error = json.loads(events[-2].removeprefix(b"data: "))
    assert error == {"error": {"message": EARLY_END, "type": "server_error"}}
    assert gateway.activity.model("my:model")["requests"] == 1


def _chunks(out: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def test_ndjson_has_a_chunk_per_token_then_the_final_one(tmp_path: Path) -> None:
    out, gateway = _stream(tmp_path, "/api/chat", CHAT, EVENTS)
    chunks = _chunks(out)
    assert [c["message"]["content"] for c in chunks] == ["Hel", 'lo "model": \u00fc', "\n!", ""]
    assert all(c["model"] == "my:model" and c["created_at"].endswith("000Z") for c in chunks)
    assert [c["done"] for c in chunks] == [False, False, False, True]
    final = chunks[-1]
    assert (final["done_reason"], final["prompt_eval_count"], final["eval_count"]) == (
        "length",
        4,
        3,
    )
    assert '"content":"lo \\"model\\": \u00fc"' in out.decode()  # compact, not escaped
    stats = gateway.activity.model("my:model")
    assert (stats["requests"], stats["prompt_tokens"], stats["completion_tokens"]) == (1, 4, 3)


@pytest.mark.parametrize(
    ("pieces", "error"),
    [
        ([*EVENTS[:3]], EARLY_END),
        ([*EVENTS[:2], EVENTS[2] + b'data: {"error": {"message": "out of memory"}}\n\n'], "out"),
        ([*EVENTS[:3], b"data: {nope\n\n"], "model server sent an event that is not JSON"),
    ],
)
def test_an_ndjson_stream_that_fails_ends_with_an_error_line(
    tmp_path: Path, pieces: list[bytes], error: str
) -> None:
    out, _gateway = _stream(tmp_path, "/api/generate", {**CHAT, "prompt": "hi"}, pieces)
    chunks = _chunks(out)
    assert [c["response"] for c in chunks[:-1]] == ["Hel", 'lo "model": \u00fc']
    assert chunks[-1]["error"].startswith(error)


@pytest.mark.parametrize(
    ("settings", "seconds"),
    [("", 0.003), ('flush_interval = "20ms"', 0.02), ("flush_interval = 0", 0.0)],
)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_token_streams_take_the_manifests_flush_interval(
    tmp_path: Path, path: str, settings: str, seconds: float
) -> None:
    RESPONSES.clear()
    out, _ = _stream(tmp_path, path, CHAT, EVENTS, settings)
    assert b"Hel" in out and len(RESPONSES) == 1
    assert isinstance(RESPONSES[0], PacedStream) and RESPONSES[0].flush_interval == seconds
