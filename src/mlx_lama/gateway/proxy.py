"""Talking to the model servers: upstream requests, and clean-up on every path.

The inference routes open an upstream request with :func:`open_upstream` (a
token stream to a plain-HTTP server with :meth:`RawStream.open`), read its
events with ``sse.py``, and answer through a :class:`ProxyStream` (for a
``RawStream``, ``paced.PacedStream``), whose ``on_close`` runs however the
response ends (finished, client gone, backend died), so the upstream response
is closed and the scheduler lease released exactly once.
:func:`until_disconnect` gives non-streaming responses the same "client gone
cancels the backend" rule. No translation between API shapes happens here
(``ollama.py`` does that).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import httpx
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from mlx_lama.gateway.http import CLIENT_GONE
from mlx_lama.gateway.spares import Spares
from mlx_lama.gateway.wire import Wire, connect

log = logging.getLogger(__name__)

T = TypeVar("T")

# Fields a client could use to make a backend load something the manifest does
# not name (mlx_lm.server loads `model`, `adapters` and `draft_model` on request).
_LOADING_FIELDS = (
    "model",
    "adapters",
    "adapter",
    "adapter_path",
    "draft_model",
    "num_draft_tokens",
)
# ASGI spec versions whose servers do not raise on sending to a client that has gone
# (uvicorn says 2.3): the stream has to listen for the disconnect itself.
_WATCHED_SPECS = frozenset(("2.0", "2.1", "2.2", "2.3"))
CONNECT_TIMEOUT = 10.0  # seconds to reach a model server (reads have no timeout)
MAX_LINE = 4 * 2**20  # longest SSE line accepted from a backend
EARLY_END = "model server closed the stream before the answer was complete"
STOPPED = "model server stopped answering"  # its connection broke mid-answer
_CHUNKED = -1  # RawStream._left for a chunked body


class UpstreamError(Exception):
    """A backend answered with an error status, or could not be reached.

    ``connect`` is True when the server answered nothing at all: no connection,
    or one closed before a response began (the server may be gone, and the
    request may be sent again). ``answered`` is True for the server's own error
    answer (it is alive and said no).
    """

    def __init__(
        self, message: str, status: int = 502, *, connect: bool = False, answered: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.connect = connect
        self.answered = answered


def backend_body(body: Mapping[str, Any], served_model: str | None) -> dict[str, Any]:
    """``body`` with every model-loading field removed and ``model`` set to what the
    backend serves (left out when the backend takes none). Pure."""
    clean = {k: v for k, v in body.items() if k not in _LOADING_FIELDS}
    if served_model is not None:
        clean = {"model": served_model, **clean}
    return clean


async def open_upstream(
    client: httpx.AsyncClient, url: str, body: Mapping[str, Any]
) -> httpx.Response:
    """POST ``body`` to ``url`` and return the response with its body unread.

    Raises UpstreamError for a connection failure or an error status (with the
    backend's own message where it gave one); the response is closed then.
    """
    request = client.build_request("POST", url, json=body)
    try:
        response = await client.send(request, stream=True)
    except httpx.ConnectError as error:
        raise UpstreamError(f"model server not reachable: {error}", 502, connect=True) from None
    except httpx.RemoteProtocolError:  # closed before the response began
        raise UpstreamError("model server closed the connection", 502, connect=True) from None
    except httpx.HTTPError as error:
        raise UpstreamError(f"model server failed: {type(error).__name__}", 502) from None
    if response.status_code >= 400:
        try:
            text = (await response.aread()).decode("utf-8", "replace")
        except httpx.HTTPError:
            text = ""
        finally:
            await response.aclose()
        raise _status_error(response.status_code, text)
    return response


def _status_error(status: int, text: str) -> UpstreamError:
    """A backend's error answer for our client: its own message, its 4xx status,
    and 502 for its 5xx (the fault is upstream of the gateway)."""
    return UpstreamError(
        error_text(text) or f"model server answered {status}",
        status if status < 500 else 502,
        answered=True,
    )


def error_text(text: str) -> str:
    """The message of a backend's error body: OpenAI's ``error.message``, FastAPI's
    ``detail`` (vllm-mlx), or the text itself."""
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    if not isinstance(data, dict):
        return text.strip()[:500]
    error, detail = data.get("error"), data.get("detail")
    if isinstance(error, dict):
        return str(error.get("message") or error)[:500]
    if error is None and isinstance(detail, str):
        return detail[:500]
    if error is None and isinstance(detail, list):  # a validation error: where, and what
        problems = [
            f"{'.'.join(str(part) for part in item.get('loc', []))}: {item.get('msg')}"
            for item in detail
            if isinstance(item, dict)
        ]
        return "; ".join(problems)[:500] or text.strip()[:500]
    return str(error or text)[:500]


def describe(error: BaseException) -> str:
    """What went wrong mid-stream, in words for the client (no paths, no traceback)."""
    if isinstance(error, UpstreamError):
        return str(error)
    if isinstance(error, httpx.HTTPError):
        return f"{STOPPED} ({type(error).__name__})"
    return "internal error"


class ProxyStream(StreamingResponse):
    """A streaming response whose ``on_close`` always runs, even when the client
    disconnects before the first chunk (when the body generator never starts). It is
    given the status to count the request under: the response's own once the whole
    body went out, else 499 (the client left, or the stream was cancelled), never a
    200 for an answer the client did not get."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        *,
        media_type: str,
        on_close: Callable[[int], Awaitable[None]],
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self._on_close = on_close
        self.completed = False  # the last chunk was sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if scope.get("asgi", {}).get("spec_version", "2.0") in _WATCHED_SPECS:
                await self._stream_watched(receive, send)
            else:
                await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._on_close(self.status_code if self.completed else CLIENT_GONE)

    async def stream_response(self, send: Send) -> None:
        """Starlette's, less its check of each chunk's type: the content is bytes."""
        await self.send_start(send)
        await self.send_body(send)

    async def send_start(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )

    async def send_body(self, send: Send) -> None:
        async for chunk in self.body_iterator:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self.completed = True

    async def _stream_watched(self, receive: Receive, send: Send) -> None:
        """The body, cut short when the client disconnects: what StreamingResponse does
        for servers that do not raise on a send to a gone client (uvicorn's ASGI 2.3),
        with one plain task watching for the disconnect instead of an anyio task group
        (which costs as much CPU as relaying a few events)."""
        task = asyncio.current_task()
        assert task is not None
        streaming = True
        gone = False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            if streaming:  # else the disconnect is the end of a complete response
                gone = True
                task.cancel()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            if not gone or task.uncancel() > 0:  # cancelled from elsewhere too
                raise
        finally:
            streaming = False
            watcher.cancel()


async def until_disconnect(receive: Receive, work: Callable[[], Awaitable[T]]) -> T | None:
    """Run ``work`` unless the client goes away first (then cancel it: None).

    Call only after the request body was read: the next ASGI message is then
    the disconnect. One plain task watches for it (as ``ProxyStream`` does), and
    what ``work`` raises is raised as itself.
    """
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await work()
    except asyncio.CancelledError:
        if not gone or task.uncancel() > 0:  # cancelled from elsewhere too
            raise
        return None
    finally:
        watcher.cancel()


@functools.lru_cache(maxsize=64)
def _request_start(url: str) -> tuple[str, int, bytes]:
    """Host, port and the request head up to the Content-Length value for a POST to
    ``url``: the same few backend URLs come again with every request. Pure."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    head = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {netloc}\r\n"
        "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
        "Content-Length: "
    )
    return host, port, head.encode("latin-1")


class RawStream:
    """A streamed HTTP/1.1 response read straight off the connection (a ``Wire``).

    Used for the token streams only: httpx costs about as much CPU per streamed
    token as the rest of the gateway together (see docs/benchmarks.md), which on
    a small machine is CPU the engine needs. One request per connection
    (``Connection: close``); the body is chunked, sized or read to the end.
    """

    def __init__(self, wire: Wire, spares: tuple[Spares, str, int] | None = None) -> None:
        self._wire = wire
        self._spares = spares  # the pool to put a fresh connection in when this ends
        self._answered = False  # the whole answer (or its data: [DONE]) came
        self._left: int | None = None  # sized body: bytes left; _CHUNKED; None: to the close
        self.status = 0
        self.headers: dict[str, str] = {}

    @classmethod
    async def open(
        cls,
        url: str,
        body: Mapping[str, Any],
        *,
        connect_timeout: float,
        spares: Spares | None = None,
    ) -> RawStream:
        """POST ``body`` to ``url`` (``http://host:port/path``); raises UpstreamError.

        With ``spares``, on a connection opened ahead when one is ready (and a new
        one is opened for the pool when this stream ends); see ``spares.py``.
        """
        host, port, start = _request_start(url)
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        request = b"%s%d\r\nConnection: close\r\n\r\n%s" % (start, len(payload), payload)
        pool = (spares, host, port) if spares is not None else None
        spare = spares.take(host, port) if spares is not None else None
        if spare is not None:
            try:
                return await cls._send(spare, request, pool)
            except UpstreamError as error:
                if not error.connect:
                    raise
                # Its server closed the spare just now: try a fresh connection once.
        try:
            # asyncio.timeout, not wait_for: no extra task per request (3.11 makes one).
            async with asyncio.timeout(connect_timeout):
                connection = await connect(host, port, limit=MAX_LINE)
        except (OSError, TimeoutError) as error:
            raise UpstreamError(f"model server not reachable: {error}", connect=True) from None
        return await cls._send(connection, request, pool)

    @classmethod
    async def _send(
        cls,
        connection: Wire,
        request: bytes,
        pool: tuple[Spares, str, int] | None,
    ) -> RawStream:
        """Write ``request`` on ``connection`` and read the answer's head."""
        stream = cls(connection, pool)
        try:
            connection.write(request)
            await stream._read_head()
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            await stream.aclose()
            raise UpstreamError("model server closed the connection", connect=True) from None
        if stream.status >= 400:
            text = await stream._read_rest()
            await stream.aclose()
            raise _status_error(stream.status, text)
        return stream

    async def _read_head(self) -> None:
        head = await self._wire.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ", 2)[1])
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                self.headers[name.strip().lower()] = value.strip()
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            self._left = _CHUNKED
        elif "content-length" in self.headers:
            self._left = int(self.headers["content-length"])

    async def _next(self) -> bytes:
        """The next piece of the body as it arrives (b"" at its end): a read for a body
        that ends with the connection, a chunk, or a sized body whole."""
        if self._left is None:
            return await self._wire.read()
        if self._left == _CHUNKED:
            size_line = await self._wire.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                self._left = 0
                return b""
            return (await self._wire.readexactly(size + 2))[:-2]
        size, self._left = self._left, 0
        return await self._wire.readexactly(size) if size else b""

    async def read(self) -> bytes:
        """The next piece of the body as it arrives, b"" at its end; UpstreamError if the
        connection breaks. For readers that take the bytes (``aiter_lines`` takes lines)."""
        try:
            if self._left is None:  # as mlx_lm.server answers: to the close
                data = await self._wire.read()
            else:
                data = await self._next()
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            raise UpstreamError(STOPPED) from None
        if not data:
            self._answered = True
        return data

    def answered(self) -> None:
        """The reader saw the answer's ``data: [DONE]`` (and may stop reading there)."""
        self._answered = True

    @property
    def buffered(self) -> bool:
        """More of the body (or of its framing) has come and was not read yet."""
        return self._wire.buffered

    async def gather(self, timeout: float, size: int) -> None:
        """Wait until ``size`` more bytes have come, the body's connection ends, or
        ``timeout`` seconds pass; reads nothing (``paced.relayed`` holds a write so)."""
        await self._wire.gather(timeout, size)

    async def _chunks(self) -> AsyncIterator[bytes]:
        while data := await self._next():
            yield data

    async def aiter_lines(self) -> AsyncIterator[str]:
        """The body's lines (without line ends); UpstreamError if the connection breaks."""
        pending = b""
        try:
            async for data in self._chunks():
                pending += data
                if len(pending) > MAX_LINE and b"\n" not in pending:
                    raise UpstreamError("model server sent an oversized event")
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    if line.startswith(b"data:") and line[5:].strip() == b"[DONE]":
                        self._answered = True  # readers may stop here
                    yield line.rstrip(b"\r").decode("utf-8", "replace")
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            raise UpstreamError(STOPPED) from None
        self._answered = True
        if pending:
            yield pending.rstrip(b"\r").decode("utf-8", "replace")

    async def _read_rest(self) -> str:
        out = b""
        with contextlib.suppress(OSError, ValueError, asyncio.IncompleteReadError):
            async for data in self._chunks():
                out += data
                if len(out) > 65536:
                    break
        return out.decode("utf-8", "replace")

    async def aclose(self) -> None:
        # A spare replaces this connection only after a whole answer: not for a client
        # that left mid-stream, nor for a server that failed or died.
        if self._spares is not None and self._answered:
            spares, host, port = self._spares
            spares.refill(host, port, limit=MAX_LINE, timeout=CONNECT_TIMEOUT)
        self._spares = None
        await self._wire.aclose()
