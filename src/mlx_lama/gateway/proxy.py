"""Talking to the model servers: upstream requests, SSE parsing, and clean-up on every path.

The inference routes open an upstream request with :func:`open_upstream`,
read OpenAI server-sent events with :func:`sse_events`, and answer through a
:class:`ProxyStream`, whose ``on_close`` runs however the response ends
(finished, client gone, backend died), so the upstream response is closed
and the scheduler lease released exactly once. :func:`until_disconnect` gives
non-streaming responses the same "client gone cancels the backend" rule.
No translation between API shapes happens here (``ollama.py`` does that).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import httpx
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from mlx_lama.gateway.spares import Spares

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
_CHUNKED = -1  # RawStream._left for a chunked body


class UpstreamError(Exception):
    """A backend answered with an error status, or could not be reached.

    ``connect`` is True when the server answered nothing at all: no connection,
    or one closed before a response began (the server may be gone, and the
    request may be sent again).
    """

    def __init__(self, message: str, status: int = 502, *, connect: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.connect = connect


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
        _error_text(text) or f"model server answered {status}", status if status < 500 else 502
    )


def _error_text(text: str) -> str:
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error)[:500]
    return str(error or text)[:500]


async def sse_events(response: httpx.Response | RawStream) -> AsyncIterator[dict[str, Any]]:
    """The JSON events of an OpenAI SSE stream, up to ``[DONE]``.

    An event a backend sends as ``data: {"error": ...}`` raises UpstreamError,
    and so does a stream that ends without ``[DONE]``: a server that dies
    mid-answer just closes the connection, which would otherwise read as the end.
    """
    async for line in response.aiter_lines():
        if len(line) > MAX_LINE:
            raise UpstreamError("model server sent an oversized event")
        if not line.startswith("data:"):
            continue  # comments, event names and blank separators
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            event = json.loads(data)
        except ValueError:
            raise UpstreamError("model server sent an event that is not JSON") from None
        if not isinstance(event, dict):
            continue
        if "error" in event and "choices" not in event:
            raise UpstreamError(_error_text(json.dumps(event)))
        yield event
    raise UpstreamError(EARLY_END)


class SseEvents:
    """The JSON events of an OpenAI SSE stream from its bytes as they arrive: what
    :func:`sse_events` yields from the lines of ``RawStream.aiter_lines``, a read's
    worth at a time (no task switch per line, which costs more than the parsing).

    Feed each read to :meth:`feed`, and :meth:`end` at the end of the body. Each
    gives the events completed, up to ``data: [DONE]`` (then ``done`` is set) or
    a failure (then ``failure`` is set: an error event, an event that is not JSON,
    an oversized line, or with :meth:`end`, a stream without ``[DONE]``); nothing
    after either is to be fed. Pure: no I/O.
    """

    def __init__(self) -> None:
        self._pending = b""  # the start of a line not yet complete
        self.done = False
        self.failure: UpstreamError | None = None

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        buffer = self._pending + data if self._pending else data
        cut = buffer.rfind(b"\n") + 1
        if not cut:
            if len(buffer) > MAX_LINE:
                self.failure = UpstreamError("model server sent an oversized event")
            self._pending = buffer
            return []
        self._pending = buffer[cut:]
        events: list[dict[str, Any]] = []
        for raw in buffer[:cut].split(b"\n")[:-1]:
            if len(raw) > MAX_LINE and len(_text(raw)) > MAX_LINE:
                self.failure = UpstreamError("model server sent an oversized event")
                break
            if not raw.startswith(b"data:"):
                continue  # comments, event names and blank separators
            payload = raw.rstrip(b"\r").decode("utf-8", "replace")[5:].strip()
            if payload == "[DONE]":
                self.done = True
                break
            try:
                event = _json(payload)
            except ValueError:
                self.failure = UpstreamError("model server sent an event that is not JSON")
                break
            if not isinstance(event, dict):
                continue
            if "error" in event and "choices" not in event:
                self.failure = UpstreamError(_error_text(json.dumps(event)))
                break
            events.append(event)
        return events

    def end(self) -> list[dict[str, Any]]:
        """At the end of the body: the events of a last line without a line end."""
        events = self.feed(b"\n") if self._pending else []
        if not self.done and self.failure is None:
            self.failure = UpstreamError(EARLY_END)
        return events


# What json.loads runs for a str, after its Python layers (an attribute typeshed omits).
_SCAN: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _json(text: str) -> Any:
    """``json.loads(text)`` for a ``text`` with no whitespace around it, without the
    three Python calls json.loads makes before its scanner (per token, they count)."""
    try:
        value, end = _SCAN(text, 0)
    except StopIteration:
        raise ValueError("not JSON") from None
    if end != len(text):
        raise ValueError("not JSON: extra data")
    return value


def _text(line: bytes) -> str:
    """A line of a backend's stream as ``RawStream.aiter_lines`` gives it."""
    return line.rstrip(b"\r").decode("utf-8", "replace")


def describe(error: BaseException) -> str:
    """What went wrong mid-stream, in words for the client (no paths, no traceback)."""
    if isinstance(error, UpstreamError):
        return str(error)
    if isinstance(error, httpx.HTTPError):
        return f"model server stopped answering ({type(error).__name__})"
    return "internal error"


class ProxyStream(StreamingResponse):
    """A streaming response whose ``on_close`` always runs, even when the client
    disconnects before the first chunk (when the body generator never starts)."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        *,
        media_type: str,
        on_close: Callable[[], Awaitable[None]],
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if scope.get("asgi", {}).get("spec_version", "2.0") in _WATCHED_SPECS:
                await self._stream_watched(receive, send)
            else:
                await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._on_close()

    async def stream_response(self, send: Send) -> None:
        """Starlette's, less its check of each chunk's type: the content is bytes."""
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        async for chunk in self.body_iterator:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

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
    the disconnect.
    """
    result: list[T] = []
    async with anyio.create_task_group() as group:

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    group.cancel_scope.cancel()
                    return

        async def run() -> None:
            result.append(await work())
            group.cancel_scope.cancel()

        group.start_soon(watch)
        group.start_soon(run)
    return result[0] if result else None


# A top-level "model" member of an event. Quotes inside JSON strings are escaped,
# so this cannot match inside a string value; nested objects carry no "model".
_MODEL_MEMBER = re.compile(r'"model"\s*:\s*"(?:[^"\\]|\\.)*"')
_USAGE_MEMBER = re.compile(r'"usage"\s*:\s*\{')
_EMPTY_CONTENT = re.compile(r'"content"\s*:\s*(?:""|null)')


class SseRelay:
    """Passes a backend's SSE stream to the client event by event, with ``model`` set
    to the name the client used, without decoding each event (that would cost a
    JSON parse and dump per token). Notes the first content event and the usage.

    Lines go to :meth:`feed`; or the bytes as they arrive go to :meth:`feed_bytes`,
    which answers the usual event (one ``data:`` line carrying the same ``model``
    member as the event before) with a few byte scans and no decoding: per token,
    every bit of code run costs CPU the engine could use.
    """

    def __init__(self, name: str) -> None:
        self._member = '"model":' + json.dumps(name, ensure_ascii=False)
        self._member_bytes = self._member.encode()
        self._seen = b""  # the model member of the last event rewritten, as it came
        self._lines: list[str] = []
        self._pending = b""  # the start of a line not yet complete (feed_bytes)
        self.done = False  # saw data: [DONE]
        self.first_content: float | None = None  # monotonic time, set by the caller's clock
        self.usage: dict[str, Any] | None = None

    def feed(self, line: str, now: float) -> bytes | None:
        """Take one line; return a whole event (ending in a blank line) when one is complete."""
        if not line:
            return self.flush()
        if line.startswith("data:"):
            line = self._data(line, now)
        self._lines.append(line)
        return None

    def flush(self) -> bytes | None:
        """The event collected so far, if any (at a blank line, or when the stream ends)."""
        if not self._lines:
            return None
        event = "\n".join(self._lines) + "\n\n"
        self._lines.clear()
        return event.encode()

    def feed_bytes(self, data: bytes, now: float) -> bytes:
        """Take the next bytes of the body as they came; return the events they complete
        (b"" for none): exactly what :meth:`feed` returns for each of their lines
        (split at "\\n", a trailing "\\r" dropped, decoded as UTF-8), together.
        Raises UpstreamError for an oversized line."""
        seen = self._seen
        # The usual read: one whole event, one ASCII data: line with no "\r" before its
        # end, nothing to note, and at its first "model" the member the last event had
        # (so that is where the regular expression of _data would match).
        if (
            seen
            and not self._pending
            and not self._lines
            and data.endswith(b"\n\n")
            and data.find(b"\n") == len(data) - 2
            and data.startswith(b"data:")
            and data[-3] != 13
            and data.isascii()
            and (self.first_content is not None or b'"content"' not in data)
            and b'"usage"' not in data
        ):
            at = data.find(b'"model"')
            if at >= 0 and data.startswith(seen, at):
                return data[:at] + self._member_bytes + data[at + len(seen) :]
        return self._feed_lines(data, now)

    def _feed_lines(self, data: bytes, now: float) -> bytes:
        buffer = self._pending + data if self._pending else data
        cut = buffer.rfind(b"\n") + 1
        if not cut:
            if len(buffer) > MAX_LINE:
                raise UpstreamError("model server sent an oversized event")
            self._pending = buffer
            return b""
        self._pending = buffer[cut:]
        events = []
        for raw in buffer[:cut].split(b"\n")[:-1]:
            event = self.feed(raw.rstrip(b"\r").decode("utf-8", "replace"), now)
            if event is not None:
                events.append(event)
        return b"".join(events)

    def end(self, now: float) -> bytes | None:
        """At the end of the body: the last event, if any (with a last line that had no
        line end), as :meth:`flush` gives it."""
        if self._pending:
            self.feed(self._pending.rstrip(b"\r").decode("utf-8", "replace"), now)
            self._pending = b""
        return self.flush()

    def _data(self, line: str, now: float) -> str:
        payload = line[5:].strip()
        if payload == "[DONE]":
            self.done = True
            return line
        wanted = self.first_content is None and '"content"' in payload
        if wanted and not _EMPTY_CONTENT.search(payload):
            self.first_content = now
        if _USAGE_MEMBER.search(payload):
            with contextlib.suppress(ValueError):
                usage = json.loads(payload).get("usage")
                if isinstance(usage, dict):
                    self.usage = usage
        member = _MODEL_MEMBER.search(line)
        if member is None:
            return line
        self._seen = member.group().encode()
        return line[: member.start()] + self._member + line[member.end() :]


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
    """A streamed HTTP/1.1 response read straight off an asyncio stream.

    Used for the token streams only: httpx costs about as much CPU per streamed
    token as the rest of the gateway together (see docs/benchmarks.md), which on
    a small machine is CPU the engine needs. One request per connection
    (``Connection: close``); the body is chunked, sized or read to the end.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        spares: tuple[Spares, str, int] | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
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
                connection = await asyncio.open_connection(host, port, limit=MAX_LINE)
        except (OSError, TimeoutError) as error:
            raise UpstreamError(f"model server not reachable: {error}", connect=True) from None
        return await cls._send(connection, request, pool)

    @classmethod
    async def _send(
        cls,
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        request: bytes,
        pool: tuple[Spares, str, int] | None,
    ) -> RawStream:
        """Write ``request`` on ``connection`` and read the answer's head."""
        reader, writer = connection
        stream = cls(reader, writer, pool)
        try:
            writer.write(request)
            await writer.drain()
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
        head = await self._reader.readuntil(b"\r\n\r\n")
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
            return await self._reader.read(65536)
        if self._left == _CHUNKED:
            size_line = await self._reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                self._left = 0
                return b""
            return (await self._reader.readexactly(size + 2))[:-2]
        size, self._left = self._left, 0
        return await self._reader.readexactly(size) if size else b""

    async def read(self) -> bytes:
        """The next piece of the body as it arrives, b"" at its end; UpstreamError if the
        connection breaks. For readers that take the bytes (``aiter_lines`` takes lines)."""
        try:
            if self._left is None:  # as mlx_lm.server answers: to the close
                data = await self._reader.read(65536)
            else:
                data = await self._next()
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            raise UpstreamError("model server stopped answering") from None
        if not data:
            self._answered = True
        return data

    def answered(self) -> None:
        """The reader saw the answer's ``data: [DONE]`` (and may stop reading there)."""
        self._answered = True

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
            raise UpstreamError("model server stopped answering") from None
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
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
