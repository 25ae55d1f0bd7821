"""The streaming routes' error answers and the stream's disconnect watch, as plain ASGI.

Every request a streaming route cannot serve gets a client error with a message
from the app (one entrance for every route). No model server is started: the one
model is external, on a port nobody listens on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlx_lama import paths
from mlx_lama.gateway.app import create_app
from mlx_lama.gateway.core import Gateway
from mlx_lama.gateway.forward import HopGuard
from mlx_lama.gateway.proxy import ProxyStream
from mlx_lama.gateway.security import ASGIApp, Listen, Message, Scope, security_policy
from mlx_lama.gateway.server import prepare
from tests.fixtures.servers import free_port


@pytest.fixture
def gateway(tmp_path: Path) -> Gateway:
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(
        f'version = 1\n\n[models.far]\nbackend = "external"\n'
        f'url = "http://127.0.0.1:{free_port()}/v1"\n',
        encoding="utf-8",
    )
    return prepare(manifest, cache_dir=paths.hf_hub_cache())


def scope_for(method: str, path: str, body: bytes) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"localhost:11434"), (b"content-length", b"%d" % len(body))],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 11434),
        "state": {},
    }


def call(app: ASGIApp, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """The status and JSON body ``app`` answers a request with."""
    sent: list[Message] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Message:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the client stays
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    async def run() -> None:
        await app(scope_for(method, path, body), receive, send)

    asyncio.run(run())
    start, *bodies = sent
    return start["status"], json.loads(b"".join(m.get("body", b"") for m in bodies))


def app_of(gateway: Gateway) -> ASGIApp:
    """The gateway's ASGI app behind its security checks and hop guard."""
    logged = create_app(gateway, security_policy(gateway.manifest, Listen("127.0.0.1", 11434)))
    guard = logged.app.app  # type: ignore[attr-defined]
    assert isinstance(guard, HopGuard)
    return guard.app


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate", "/v1/chat/completions"])
@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{not json",
        b"[1]",
        b'{"model": "nope", "messages": [{"role": "user", "content": "hi"}], "stream": true}',
        b'{"model": "far", "prompt": "hi", "messages": [{"role": "user", "content": "hi"}], '
        b'"max_tokens": 0, "options": {"temperature": -1}, "stream": true}',
        b'{"messages": []}',
    ],
)
def test_a_request_a_streaming_route_cannot_serve_is_a_client_error_that_says_why(
    gateway: Gateway, path: str, body: bytes
) -> None:
    status, answer = call(app_of(gateway), "POST", path, body)
    assert 400 <= status < 500, (status, answer)
    error = answer["error"]
    message = error["message"] if isinstance(error, dict) else error
    assert isinstance(message, str) and message


def test_an_unreachable_server_is_a_502_that_says_so(gateway: Gateway) -> None:
    gateway.client = httpx.AsyncClient(trust_env=False)  # as the lifespan does
    try:
        body = json.dumps({"model": "far", "prompt": "hi", "stream": True}).encode()
        status, answer = call(app_of(gateway), "POST", "/v1/completions", body)
        assert status == 502 and "not reachable" in answer["error"]["message"]
    finally:
        asyncio.run(gateway.client.aclose())


# -- the disconnect watch of ProxyStream


def run_stream(*, leave_after: int | None) -> tuple[list[bytes], list[str]]:
    """Stream three chunks; the client leaves after ``leave_after`` of them (or stays).
    Returns the chunks sent and what happened to the body and on_close."""
    seen: list[str] = []
    sent: list[bytes] = []

    async def scenario() -> None:
        gone = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            try:
                for index in range(3):
                    if index:
                        await asyncio.sleep(0.01)
                    yield b"chunk %d" % index
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        async def on_close(status: int) -> None:
            seen.append(f"closed, counted {status}")

        async def receive() -> Message:
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                sent.append(message["body"])
                if len(sent) == leave_after:
                    gone.set()
            elif message["type"] == "http.response.body":  # the end: as uvicorn, say gone
                gone.set()

        stream = ProxyStream(body(), media_type="text/event-stream", on_close=on_close)
        await stream(scope_for("POST", "/v1/chat/completions", b""), receive, send)
        await asyncio.sleep(0.05)  # a late watcher would act now

    asyncio.run(scenario())
    return sent, seen


def test_a_client_that_leaves_cancels_the_stream_and_on_close_runs_once() -> None:
    sent, seen = run_stream(leave_after=1)
    assert sent == [b"chunk 0"]
    assert seen == ["cancelled", "closed, counted 499"]  # the client left: not a 200


def test_a_complete_stream_is_not_cancelled_by_the_end_of_the_response() -> None:
    sent, seen = run_stream(leave_after=None)
    assert sent == [b"chunk 0", b"chunk 1", b"chunk 2"]
    assert seen == ["closed, counted 200"]
