"""The hot path (``gateway/hotpath.py``) and the stream's disconnect watch, as plain ASGI.

The hot path must answer exactly as the Starlette app it stands in front of:
each error case is sent to both and the answers compared. No model server is
started: the one model is external, on a port nobody listens on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.responses import Response

from mlx_lama import paths
from mlx_lama.gateway.app import create_app
from mlx_lama.gateway.core import Gateway
from mlx_lama.gateway.forward import HopGuard
from mlx_lama.gateway.hotpath import HotPath
from mlx_lama.gateway.http import INTERNAL_ERROR
from mlx_lama.gateway.inference import Call
from mlx_lama.gateway.proxy import ProxyStream
from mlx_lama.gateway.security import ASGIApp, Message, Scope
from mlx_lama.gateway.server import Listen, prepare, security_policy
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


def apps(gateway: Gateway) -> tuple[ASGIApp, ASGIApp]:
    """The hot path, and the Starlette app behind it."""
    guard = create_app(gateway, security_policy(gateway.manifest, Listen("127.0.0.1", 11434))).app
    assert isinstance(guard, HopGuard)  # between the security checks and the hot path
    hot = guard.app
    assert isinstance(hot, HotPath)
    return hot, hot.app


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
def test_hot_path_errors_are_the_apps(gateway: Gateway, path: str, body: bytes) -> None:
    hot, app = apps(gateway)
    assert call(hot, "POST", path, body) == call(app, "POST", path, body)


def test_an_unreachable_server_is_the_same_502(gateway: Gateway) -> None:
    hot, app = apps(gateway)
    gateway.client = httpx.AsyncClient(trust_env=False)  # as the lifespan does
    try:
        body = json.dumps({"model": "far", "prompt": "hi", "stream": True}).encode()
        status, answer = call(hot, "POST", "/v1/completions", body)
        assert status == 502 and "not reachable" in answer["error"]["message"]
        assert call(app, "POST", "/v1/completions", body) == (status, answer)
    finally:
        asyncio.run(gateway.client.aclose())


def test_other_methods_and_routes_go_to_the_app(gateway: Gateway) -> None:
    hot, app = apps(gateway)
    for method, path in [("GET", "/v1/chat/completions"), ("POST", "/api/show")]:
        assert call(hot, method, path, b"{}") == call(app, method, path, b"{}")


def test_an_unexpected_error_is_a_500_and_raised_for_the_server(gateway: Gateway) -> None:
    async def broken(call: Call) -> Response:
        raise RuntimeError("bug")

    hot = HotPath(apps(gateway)[1], gateway, {"/api/chat": broken})
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    with pytest.raises(RuntimeError, match="bug"):
        asyncio.run(hot(scope_for("POST", "/api/chat", b"{}"), receive, send))
    assert sent[0]["status"] == 500
    assert json.loads(sent[1]["body"]) == {"error": INTERNAL_ERROR}


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

        async def on_close() -> None:
            seen.append("closed")

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
    assert seen == ["cancelled", "closed"]


def test_a_complete_stream_is_not_cancelled_by_the_end_of_the_response() -> None:
    sent, seen = run_stream(leave_after=None)
    assert sent == [b"chunk 0", b"chunk 1", b"chunk 2"]
    assert seen == ["closed"]
