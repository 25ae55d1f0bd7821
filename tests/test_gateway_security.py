"""The gateway's security middleware around tiny ASGI apps, mostly via starlette's TestClient."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from mlx_lama.gateway.security import (
    DEFAULT_MAX_BODY_BYTES,
    Message,
    Receive,
    Scope,
    SecurityMiddleware,
    SecurityPolicy,
    Send,
    error_body,
    is_local_origin,
)
from mlx_lama.netaddr import is_loopback_host

LOCAL = "http://localhost:11434"
KEY = "s3cret-key"
MB = 2**20


class EchoApp:
    """Raw ASGI app: reads the whole body, records what it saw, answers with its length."""

    def __init__(self) -> None:
        self.calls = 0
        self.chunks: list[int] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        self.calls += 1
        self.chunks = []
        more = True
        while more:
            message: Message = await receive()
            self.chunks.append(len(message.get("body", b"")))
            more = message.get("more_body", False)
        body = json.dumps({"received": sum(self.chunks)}).encode()
        headers = [(b"content-type", b"application/json"), (b"vary", b"Accept-Encoding")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def policy(
    bind_host: str = "127.0.0.1",
    api_key: str | None = None,
    origins: tuple[str, ...] = (),
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> SecurityPolicy:
    return SecurityPolicy(bind_host, 11434, api_key, origins, max_body_bytes)


def client(app: EchoApp, pol: SecurityPolicy) -> TestClient:
    return TestClient(SecurityMiddleware(app, pol), base_url=LOCAL)


def chunks(total: int, size: int = MB) -> Iterator[bytes]:
    while total > 0:
        yield b"x" * min(size, total)
        total -= size


# -- pure helpers -----------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", True),
        ("LOCALHOST:11434", True),
        ("127.0.0.1", True),
        ("127.8.9.10:80", True),
        ("[::1]", True),
        ("[::1]:11434", True),
        ("::1", True),
        ("[::ffff:127.0.0.1]:1", True),
        ("evil.example", False),
        ("localhost.evil.example", False),
        ("127.0.0.1.evil.example", False),
        ("0.0.0.0", False),
        ("192.168.1.2:11434", False),
        ("", False),
        (":11434", False),
        ("localhost:", False),
        ("localhost:abc", False),
        ("localhost:\u00b2", False),
        ("[::1", False),
        ("[::1]x", False),
    ],
)
def test_is_loopback_host(host: str, expected: bool) -> None:
    assert is_loopback_host(host) is expected


@pytest.mark.parametrize(
    ("origin", "expected"),
    [
        ("http://localhost:3000", True),
        ("https://localhost", True),
        ("http://127.0.0.1:8080", True),
        ("http://[::1]:5173", True),
        ("app://-", True),
        ("file://", True),
        ("tauri://localhost", True),
        ("https://evil.example", False),
        ("http://localhost.evil.example", False),
        ("http://localhost:3000/path", False),
        ("ftp://localhost", False),
        ("null", False),
        ("http://0.0.0.0:3000", False),
    ],
)
def test_is_local_origin(origin: str, expected: bool) -> None:
    assert is_local_origin(origin) is expected


def test_error_body_shapes() -> None:
    assert json.loads(error_body("/api/chat", 401, "nope")) == {"error": "nope"}
    assert json.loads(error_body("/v1/chat/completions", 413, "big")) == {
        "error": {"message": "big", "type": "invalid_request_error", "param": None, "code": None}
    }
    assert json.loads(error_body("/v1/models/x", 404, "gone"))["error"]["type"] == (
        "not_found_error"
    )
    assert json.loads(error_body("/v1/x", 503, "busy"))["error"]["type"] == "api_error"
    assert json.loads(error_body("/v1x", 400, "m")) == {"error": "m"}


def test_loopback_only_follows_bind_host() -> None:
    assert policy("127.0.0.1").loopback_only
    assert policy("::1").loopback_only
    assert policy("localhost").loopback_only
    assert not policy("0.0.0.0").loopback_only
    assert not policy("192.168.1.2").loopback_only


@pytest.mark.parametrize("kwargs", [{"api_key": ""}, {"api_key": "  "}, {"max_body_bytes": -1}])
def test_policy_rejects_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"api_key|max_body_bytes"):
        policy(**kwargs)


# -- DNS rebinding ----------------------------------------------------------


def test_foreign_host_gets_empty_403_on_loopback_bind() -> None:
    app = EchoApp()
    response = client(app, policy()).get("/api/tags", headers={"host": "evil.example"})
    assert response.status_code == 403
    assert response.content == b""
    assert app.calls == 0


@pytest.mark.parametrize("host", ["localhost:11434", "127.0.0.1", "[::1]:11434", "LocalHost"])
def test_loopback_hosts_pass(host: str) -> None:
    app = EchoApp()
    response = client(app, policy()).get("/api/tags", headers={"host": host})
    assert response.status_code == 200
    assert app.calls == 1


def test_non_loopback_bind_accepts_any_host() -> None:
    app = EchoApp()
    response = client(app, policy("0.0.0.0")).get("/api/tags", headers={"host": "evil.example"})
    assert response.status_code == 200


def test_missing_host_is_refused_on_loopback_bind() -> None:
    sent = drive(SecurityMiddleware(EchoApp(), policy()), headers=[])
    assert sent[0]["status"] == 403


# -- API key ----------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {KEY}"}, {"x": "y"}],
)
def test_missing_or_wrong_key_is_401_in_ollama_shape(headers: dict[str, str]) -> None:
    app = EchoApp()
    response = client(app, policy(api_key=KEY)).post("/api/chat", headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert response.headers["www-authenticate"] == "Bearer"
    assert set(response.json()) == {"error"}
    assert "Authorization: Bearer" in response.json()["error"]
    assert app.calls == 0


def test_missing_key_is_401_in_openai_shape() -> None:
    response = client(EchoApp(), policy(api_key=KEY)).post("/v1/chat/completions")
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] is None
    assert error["code"] is None


def test_key_in_query_string_is_not_accepted() -> None:
    response = client(EchoApp(), policy(api_key=KEY)).get(f"/api/tags?key={KEY}")
    assert response.status_code == 401


@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
def test_right_key_passes(scheme: str) -> None:
    app = EchoApp()
    headers = {"authorization": f"{scheme} {KEY}"}
    response = client(app, policy(api_key=KEY)).post("/v1/chat/completions", headers=headers)
    assert response.status_code == 200
    assert app.calls == 1


def test_anthropic_clients_may_send_the_key_as_x_api_key() -> None:
    app = EchoApp()
    secured = client(app, policy(api_key=KEY))
    response = secured.post("/v1/messages", headers={"x-api-key": KEY})
    assert response.status_code == 200
    assert app.calls == 1
    wrong = secured.post("/v1/messages", headers={"x-api-key": "wrong"})
    assert wrong.status_code == 401
    assert wrong.json()["type"] == "error"  # Anthropic's shape, which its SDK reads
    assert wrong.json()["error"]["type"] == "authentication_error"
    assert "x-api-key" in wrong.json()["error"]["message"]
    assert app.calls == 1


@pytest.mark.parametrize(("method", "path"), [("GET", "/"), ("HEAD", "/"), ("GET", "/health")])
def test_liveness_routes_need_no_key(method: str, path: str) -> None:
    response = client(EchoApp(), policy(api_key=KEY)).request(method, path)
    assert response.status_code == 200


def test_post_to_root_still_needs_the_key() -> None:
    assert client(EchoApp(), policy(api_key=KEY)).post("/").status_code == 401


# -- CORS -------------------------------------------------------------------


def preflight(origin: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        "origin": origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
        **(extra or {}),
    }


def test_preflight_from_local_origin_is_204_with_headers() -> None:
    app = EchoApp()
    c = client(app, policy(api_key=KEY))  # preflights never carry the key
    response = c.options("/api/chat", headers=preflight("http://localhost:3000"))
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed
    assert "content-type" in allowed
    assert response.headers["vary"] == "Origin"
    assert "access-control-allow-credentials" not in response.headers
    assert "access-control-allow-private-network" not in response.headers
    assert app.calls == 0


def test_preflight_from_foreign_origin_is_403_without_cors_headers() -> None:
    response = client(EchoApp(), policy()).options(
        "/api/chat", headers=preflight("https://evil.example")
    )
    assert response.status_code == 403
    assert not [h for h in response.headers if h.startswith("access-control-")]


def test_configured_origin_is_allowed_and_may_ask_for_private_network() -> None:
    origin = "https://chat.example.com"
    c = client(EchoApp(), policy(origins=(origin,)))
    pna = {"access-control-request-private-network": "true"}
    response = c.options("/v1/chat/completions", headers=preflight(origin, pna))
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == origin
    assert response.headers["access-control-allow-private-network"] == "true"
    actual = c.post("/v1/chat/completions", headers={"origin": origin})
    assert actual.status_code == 200
    assert actual.headers["access-control-allow-origin"] == origin


def test_configured_origin_matches_exactly() -> None:
    c = client(EchoApp(), policy(origins=("https://chat.example.com",)))
    response = c.options("/api/chat", headers=preflight("https://chat.example.com:444"))
    assert response.status_code == 403


def test_wildcard_origin_allows_any_origin() -> None:
    c = client(EchoApp(), policy(origins=("*",)))
    response = c.options("/api/chat", headers=preflight("https://anything.example"))
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "https://anything.example"


def test_actual_request_from_allowed_origin_gets_cors_and_merged_vary() -> None:
    response = client(EchoApp(), policy()).post(
        "/api/chat", headers={"origin": "http://127.0.0.1:5173"}, content=b"{}"
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://127.0.0.1:5173"
    assert response.headers["vary"] == "Accept-Encoding, Origin"


def test_actual_request_from_foreign_origin_is_refused() -> None:
    # A cross-site "simple" POST needs no preflight: refusing it stops CSRF-style side effects.
    app = EchoApp()
    response = client(app, policy()).post(
        "/api/pull", headers={"origin": "https://evil.example"}, content=b"{}"
    )
    assert response.status_code == 403
    assert "access-control-allow-origin" not in response.headers
    assert response.json() == {"error": response.json()["error"]}
    assert app.calls == 0


def test_repeated_origin_is_refused() -> None:
    headers = [(b"host", b"localhost"), (b"origin", b"http://localhost:1"), (b"origin", b"x://y")]
    sent = drive(SecurityMiddleware(EchoApp(), policy()), headers=headers, method="POST")
    assert sent[0]["status"] == 403


def test_options_without_preflight_headers_reaches_the_app() -> None:
    app = EchoApp()
    response = client(app, policy()).options("/api/chat", headers={"origin": LOCAL})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == LOCAL
    assert app.calls == 1


def test_request_without_origin_gets_no_cors_headers() -> None:
    response = client(EchoApp(), policy()).get("/api/tags")
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_401_to_an_allowed_origin_is_readable_by_the_page() -> None:
    response = client(EchoApp(), policy(api_key=KEY)).post(
        "/api/chat", headers={"origin": "http://localhost:3000"}
    )
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == "http://localhost:3000"


# -- body limit -------------------------------------------------------------


def test_declared_oversize_body_is_413_in_ollama_shape() -> None:
    app = EchoApp()
    response = client(app, policy()).post("/api/chat", content=b"x" * (20 * 10**6))
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    assert "too large" in response.json()["error"]
    assert app.calls == 0


def test_declared_oversize_body_is_413_in_openai_shape() -> None:
    response = client(EchoApp(), policy()).post("/v1/chat/completions", content=b"x" * (20 * 10**6))
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert str(DEFAULT_MAX_BODY_BYTES) in response.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/api/chat", "/v1/embeddings"])
def test_streamed_oversize_body_is_413_and_app_never_sees_the_excess(path: str) -> None:
    app = EchoApp()
    response = client(app, policy()).post(path, content=chunks(20 * 10**6))
    assert response.status_code == 413
    assert sum(app.chunks) <= DEFAULT_MAX_BODY_BYTES
    assert b"Traceback" not in response.content
    if path.startswith("/v1/"):
        assert response.json()["error"]["type"] == "invalid_request_error"
    else:
        assert set(response.json()) == {"error"}


def test_body_at_exactly_the_limit_passes_declared_and_streamed() -> None:
    limit = 3 * MB + 17
    c = client(EchoApp(), policy(max_body_bytes=limit))
    assert c.post("/api/chat", content=b"x" * limit).json() == {"received": limit}
    assert c.post("/api/chat", content=chunks(limit)).json() == {"received": limit}
    assert c.post("/api/chat", content=chunks(limit + 1)).status_code == 413


def test_streamed_oversize_body_through_a_starlette_app_is_413_not_500() -> None:
    # Starlette's error middleware tries to answer 500 before re-raising; the 413 must win.
    async def echo(request: Request) -> Response:
        return JSONResponse({"received": len(await request.body())})

    app = Starlette(routes=[Route("/api/chat", echo, methods=["POST"])])
    c = TestClient(SecurityMiddleware(app, policy(max_body_bytes=MB)), base_url=LOCAL)
    response = c.post("/api/chat", content=chunks(2 * MB, size=64 * 1024))
    assert response.status_code == 413
    assert set(response.json()) == {"error"}
    assert c.post("/api/chat", content=chunks(MB, size=64 * 1024)).json() == {"received": MB}


@pytest.mark.parametrize("value", [b"abc", b"\xb2", b"-1"])
def test_malformed_content_length_is_400(value: bytes) -> None:
    headers = [(b"content-length", value), (b"host", b"localhost")]
    sent = drive(SecurityMiddleware(EchoApp(), policy()), headers=headers, method="POST")
    assert sent[0]["status"] == 400


def test_conflicting_content_lengths_are_400() -> None:
    headers = [(b"content-length", b"5"), (b"content-length", b"6"), (b"host", b"localhost")]
    sent = drive(SecurityMiddleware(EchoApp(), policy()), headers=headers, method="POST")
    assert sent[0]["status"] == 400


def test_app_errors_below_the_limit_still_propagate() -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        drive(SecurityMiddleware(broken, policy()), headers=[(b"host", b"localhost")])


# -- other scopes -----------------------------------------------------------


def websocket_app() -> Starlette:
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hi")
        await websocket.close()

    return Starlette(routes=[WebSocketRoute("/ws", ws)])


def test_websocket_passes_when_allowed() -> None:
    c = TestClient(SecurityMiddleware(websocket_app(), policy()), base_url=LOCAL)
    with c.websocket_connect("/ws", headers={"host": "localhost:11434"}) as ws:
        assert ws.receive_text() == "hi"


@pytest.mark.parametrize(
    ("pol", "headers"),
    [
        (policy(), {"host": "evil.example"}),
        (policy(), {"host": "localhost", "origin": "https://evil.example"}),
        (policy(api_key=KEY), {"host": "localhost"}),
    ],
)
def test_websocket_is_closed_when_refused(pol: SecurityPolicy, headers: dict[str, str]) -> None:
    c = TestClient(SecurityMiddleware(websocket_app(), pol), base_url=LOCAL)
    with pytest.raises(WebSocketDisconnect) as info, c.websocket_connect("/ws", headers=headers):
        pass
    assert info.value.code == 1008


def test_lifespan_passes_through() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    asyncio.run(SecurityMiddleware(app, policy())({"type": "lifespan"}, _no_receive, _no_send))
    assert seen == ["lifespan"]


# -- raw ASGI driver, for requests TestClient cannot build ------------------


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


async def _no_send(message: Message) -> None:
    return None


def drive(
    app: Any, headers: list[tuple[bytes, bytes]], method: str = "GET", path: str = "/api/tags"
) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {"type": "http", "method": method, "path": path, "headers": headers}
    asyncio.run(app(scope, receive, send))
    return sent
