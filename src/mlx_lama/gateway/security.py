"""The gateway's "safe by default" layer: Host, API key, CORS and body-size checks.

``SecurityMiddleware`` wraps any ASGI app (the gateway's starlette app in
practice; ``create_app`` installs it outermost). In order, for each HTTP
request it:

1. refuses DNS rebinding: bound to a loopback address, a Host that is not a
   loopback name or address gets 403 with an empty body, as Ollama does;
2. answers CORS preflights itself (204 for allowed origins, 403 otherwise) and
   refuses actual requests that carry a disallowed ``Origin`` with 403, so a
   foreign page cannot fire "simple" POSTs at the gateway even though it
   could never read the answer;
3. checks ``Authorization: Bearer <key>`` in constant time when a key is set
   (``GET``/``HEAD`` of ``/`` and ``/health`` stay open for liveness probes);
4. caps the request body: 413 on a declared ``Content-Length`` over the
   limit, and by counting streamed bytes, so the app never receives more.

Errors use the caller's API family (``error_body``): OpenAI's shape under
``/v1/``, Ollama's ``{"error": ...}`` elsewhere; never a traceback or a path.

Allowed origins: configured ones (exact match, ``"*"`` for any) plus local
ones. Local means ``http``/``https`` on ``localhost`` or a loopback address
(any port), and the desktop-app schemes Ollama also allows by default
(``app://``, ``file://``, ``tauri://``, ``vscode-webview://``,
``vscode-file://``): a web page can never have those origins, only local
software that could reach the port anyway. ``Origin: null`` (sandboxed
iframes, some file pages) is *not* local; configure ``"null"`` to allow it.

It does not route, log request bodies or touch the backends; it only decides
whether a request reaches the wrapped app. Websocket connections get the same
Host, Origin and key checks and are closed (policy violation) on failure.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlx_lama.backends.base import client_host
from mlx_lama.humanize import size_str
from mlx_lama.netaddr import is_ascii_number, is_loopback_host

if TYPE_CHECKING:
    from mlx_lama.schema.manifest import Manifest

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_MAX_BODY_BYTES = 16 * 2**20
# Schemes only local desktop software can have as an origin (Ollama's defaults).
DESKTOP_ORIGIN_SCHEMES = ("app", "file", "tauri", "vscode-webview", "vscode-file")
OPEN_PATHS = frozenset({"/", "/health"})
ALLOW_METHODS = "GET, HEAD, POST, PUT, DELETE, OPTIONS"
# Ollama's list: the OpenAI SDKs send x-stainless-* headers from browsers too.
ALLOW_HEADERS = ", ".join(
    (
        "Authorization",
        "Content-Type",
        "Accept",
        "User-Agent",
        "X-Requested-With",
        "OpenAI-Beta",
        "X-Stainless-Arch",
        "X-Stainless-Async",
        "X-Stainless-Lang",
        "X-Stainless-OS",
        "X-Stainless-Package-Version",
        "X-Stainless-Retry-Count",
        "X-Stainless-Runtime",
        "X-Stainless-Runtime-Version",
        "X-Stainless-Timeout",
    )
)
PREFLIGHT_MAX_AGE = "600"


@dataclass(frozen=True, slots=True)
class SecurityPolicy:
    """What the gateway accepts: the address it is bound to, its key and origins."""

    bind_host: str
    port: int
    api_key: str | None
    origins: tuple[str, ...]
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    def __post_init__(self) -> None:
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key is empty; set a real key, or None to turn the check off")
        if self.max_body_bytes < 0:
            raise ValueError(f"max_body_bytes must be >= 0, not {self.max_body_bytes}")

    @property
    def loopback_only(self) -> bool:
        """Bound to loopback: the only case where DNS rebinding is a threat."""
        return is_loopback_host(self.bind_host)


def is_local_origin(origin: str) -> bool:
    """An Origin only local software can send: loopback http(s) or a desktop scheme. Pure."""
    scheme, sep, rest = origin.lower().partition("://")
    if not sep:
        return False
    if scheme in DESKTOP_ORIGIN_SCHEMES:
        return True
    # An origin is scheme://host[:port] and nothing else; a path means it is forged.
    return scheme in ("http", "https") and "/" not in rest and is_loopback_host(rest)


# Anthropic's error type per HTTP status; any other is an api_error.
ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    """An error in Anthropic's shape: ``{"type": "error", "error": {type, message}}``. Pure."""
    kind = ANTHROPIC_ERRORS.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def error_body(path: str, status: int, message: str) -> bytes:
    """A JSON error in the API family of ``path``: Anthropic's under ``/v1/messages``,
    OpenAI's elsewhere under ``/v1/``, else Ollama's. Pure.

    OpenAI ``type`` follows Ollama's compat layer for 404 (``not_found_error``),
    is ``invalid_request_error`` for other 4xx and ``api_error`` otherwise.
    """
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return json.dumps(anthropic_error(status, message)).encode()
    if path == "/v1" or path.startswith("/v1/"):
        if status == 404:
            kind = "not_found_error"
        elif 400 <= status < 500:
            kind = "invalid_request_error"
        else:
            kind = "api_error"
        payload: dict[str, Any] = {
            "error": {"message": message, "type": kind, "param": None, "code": None}
        }
    else:
        payload = {"error": message}
    return json.dumps(payload).encode()


Headers = dict[bytes, list[str]]
# The headers the checks read; the others are not even decoded.
_CHECKED = frozenset(
    (
        b"host",
        b"origin",
        b"authorization",
        b"x-api-key",
        b"content-length",
        b"access-control-request-method",
        b"access-control-request-private-network",
    )
)
MAX_REMEMBERED_HOSTS = 64  # Host values known to be loopback (the client picks them)


def _checked_headers(scope: Scope) -> Headers:
    """Every value of each header the checks read, in one pass over the request's."""
    found: Headers = {}
    for raw, value in scope.get("headers", ()):
        key = raw.lower()
        if key in _CHECKED:
            found.setdefault(key, []).append(value.decode("latin-1"))
    return found


def _single(headers: Headers, name: bytes) -> str | None:
    """The header's value; None if absent or sent more than once (ambiguous)."""
    values = headers.get(name)
    return values[0] if values is not None and len(values) == 1 else None


class _BodyTooLargeError(Exception):
    """Raised into the app from ``receive`` once the streamed body passes the limit."""


class SecurityMiddleware:
    """Pure ASGI middleware enforcing a :class:`SecurityPolicy` (see the module docstring)."""

    def __init__(self, app: ASGIApp, policy: SecurityPolicy) -> None:
        self.app = app
        self.policy = policy
        self._loopback_hosts: set[str] = set()  # is_loopback_host is pure: remember its yes

    @property
    def policy(self) -> SecurityPolicy:
        return self._policy

    @policy.setter
    def policy(self, policy: SecurityPolicy) -> None:
        """Replace the policy (a reloaded manifest's key and origins) for the next request."""
        self._policy = policy
        self._api_key = policy.api_key.encode() if policy.api_key is not None else None
        self._loopback_only = policy.loopback_only  # a property that parses an address

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    # -- checks ------------------------------------------------------------

    def host_allowed(self, headers: Headers) -> bool:
        if not self._loopback_only:
            return True
        host = _single(headers, b"host")
        if host is None:
            return False
        if host in self._loopback_hosts:
            return True
        if not is_loopback_host(host):
            return False
        if len(self._loopback_hosts) < MAX_REMEMBERED_HOSTS:
            self._loopback_hosts.add(host)
        return True

    def origin_allowed(self, origin: str) -> bool:
        return (
            "*" in self.policy.origins or origin in self.policy.origins or is_local_origin(origin)
        )

    def authorized(self, scope: Scope, headers: Headers) -> bool:
        if self._api_key is None:
            return True
        if scope["path"] in OPEN_PATHS and scope["method"] in ("GET", "HEAD"):
            return True
        header = _single(headers, b"authorization")
        if header is None:  # Anthropic's clients send their key as x-api-key
            key = _single(headers, b"x-api-key")
            return key is not None and hmac.compare_digest(
                key.strip().encode("latin-1"), self._api_key
            )
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(token.strip().encode("latin-1"), self._api_key)

    # -- HTTP --------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        headers = _checked_headers(scope)
        if not self.host_allowed(headers):
            await _respond(send, 403, b"", content_type=None)
            return
        origin = _single(headers, b"origin")
        # A repeated Origin is as suspect as a foreign one.
        if b"origin" in headers and not (origin is not None and self.origin_allowed(origin)):
            message = "origin not allowed; add it to the gateway's allowed origins"
            await _respond(send, 403, error_body(path, 403, message))
            return
        # Echo the origin, never "*", and never send Allow-Credentials.
        cors = [(b"access-control-allow-origin", origin.encode("latin-1"))] if origin else []
        preflight = scope["method"] == "OPTIONS" and b"access-control-request-method" in headers
        if origin and preflight:
            await self._preflight(headers, send, origin, cors)
            return
        if not self.authorized(scope, headers):
            message = (
                "unauthorized: send the gateway's API key as 'Authorization: Bearer <key>' "
                "(or as 'x-api-key: <key>')"
            )
            extra = [(b"www-authenticate", b"Bearer"), *cors]
            await _respond(send, 401, error_body(path, 401, message), extra)
            return
        limit = self.policy.max_body_bytes
        declared = headers.get(b"content-length")
        if declared:
            # Differing or non-numeric lengths are a smuggling attempt, not a body.
            if len(set(declared)) != 1 or not is_ascii_number(declared[0].strip()):
                await _respond(send, 400, error_body(path, 400, "invalid Content-Length"), cors)
                return
            if int(declared[0]) > limit:
                await _respond(send, 413, error_body(path, 413, _too_large(limit)), cors)
                return
            if b"transfer-encoding" not in headers:
                # The HTTP parser delivers no more than the declared length, so the body
                # needs no counting; and the app's sends (a token stream's, one per
                # token) go out without a wrapper.
                await self.app(scope, receive, _with_cors(send, cors))
                return
        await self._call_limited(scope, receive, _with_cors(send, cors), limit)

    async def _preflight(
        self, asked: Headers, send: Send, origin: str, cors: list[tuple[bytes, bytes]]
    ) -> None:
        headers = [
            *cors,
            (b"access-control-allow-methods", ALLOW_METHODS.encode()),
            (b"access-control-allow-headers", ALLOW_HEADERS.encode()),
            (b"access-control-max-age", PREFLIGHT_MAX_AGE.encode()),
            (b"vary", b"Origin"),
        ]
        # Chrome's Private Network Access: only origins the user named may reach in.
        pna = _single(asked, b"access-control-request-private-network")
        if pna == "true" and origin in self.policy.origins:
            headers.append((b"access-control-allow-private-network", b"true"))
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def _call_limited(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True  # the chunk that crosses the limit is never delivered
                    raise _BodyTooLargeError
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # whatever the app says about a body it never got, the answer is 413
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            path: str = scope["path"]
            await _respond(send, 413, error_body(path, 413, _too_large(limit)))

    # -- websocket ---------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _checked_headers(scope)
        origin = _single(headers, b"origin")
        if (
            not self.host_allowed(headers)
            or (b"origin" in headers and not (origin and self.origin_allowed(origin)))
            or not self.authorized(scope, headers)
        ):
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})  # policy violation
            return
        await self.app(scope, receive, send)


def _too_large(limit: int) -> str:
    return f"request body too large: the limit is {limit} bytes ({size_str(limit)})"


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
    content_type: str | None = "application/json",
) -> None:
    headers = [(b"content-length", str(len(body)).encode())]
    if content_type is not None:
        headers.append((b"content-type", content_type.encode()))
    headers.extend(extra or [])
    if extra and any(name == b"access-control-allow-origin" for name, _ in extra):
        headers.append((b"vary", b"Origin"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _with_cors(send: Send, cors: list[tuple[bytes, bytes]]) -> Send:
    """``send`` that adds the CORS headers and ``Vary: Origin`` to the response start."""
    if not cors:
        return send

    async def cors_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [
                (k, v)
                for k, v in message.get("headers", [])
                if k.lower() != b"access-control-allow-origin"
            ]
            vary = [v for k, v in headers if k.lower() == b"vary"]
            headers = [(k, v) for k, v in headers if k.lower() != b"vary"]
            values = [p.strip() for v in vary for p in v.split(b",") if p.strip()]
            if b"origin" not in (p.lower() for p in values):
                values.append(b"Origin")
            headers += [*cors, (b"vary", b", ".join(values))]
            message = {**message, "headers": headers}
        await send(message)

    return cors_send


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int

    @property
    def url(self) -> str:
        """Where a client on this machine reaches the gateway."""
        host = client_host(self.host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"


def security_policy(manifest: Manifest, listen: Listen) -> SecurityPolicy:
    server = manifest.server
    return SecurityPolicy(
        bind_host=listen.host,
        port=listen.port,
        api_key=server.api_key,
        origins=tuple(server.origins),
    )
