"""OpenAI server-sent events from a model server: parsed, or passed on with ``model``
rewritten.

The inference routes read a backend's token stream with :func:`sse_events`
(lines, for any response), with :class:`SseEvents` (the bytes of each read of
a ``RawStream``, for the Ollama translation), or pass it through to an OpenAI
client with :class:`SseRelay`. Both byte readers give exactly what the line
readers give; they exist because per streamed token every bit of code costs
CPU the engine could use. A backend's error event, an event that is not JSON,
an oversized line and a stream that ends without ``[DONE]`` all become
:class:`UpstreamError`. Pure, but for :func:`sse_events` reading its response.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from mlx_lama.gateway.proxy import EARLY_END, MAX_LINE, RawStream, UpstreamError, error_text


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
            raise UpstreamError(error_text(json.dumps(event)))
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
                self.failure = UpstreamError(error_text(json.dumps(event)))
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


# A top-level "model" member of an event. Quotes inside JSON strings are escaped,
# so this cannot match inside a string value; nested objects carry no "model".
_MODEL_MEMBER = re.compile(r'"model"\s*:\s*"(?:[^"\\]|\\.)*"')
_USAGE_MEMBER = re.compile(r'"usage"\s*:\s*\{')
_EMPTY_CONTENT = re.compile(r'"content"\s*:\s*(?:""|null)')
_USAGE_OBJECT = re.compile(_USAGE_MEMBER.pattern.encode())  # the same, in ASCII bytes


def with_reasoning_content(payload: str) -> str:
    """A chat event (or answer) whose choices carry mlx_lm.server's ``reasoning``, with
    the same text under ``reasoning_content`` too, the name OpenAI clients read
    (DeepSeek's); ``payload`` as it was when there is nothing to add."""
    try:
        event = json.loads(payload)
    except ValueError:
        return payload
    if not add_reasoning_content(event):
        return payload
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


def add_reasoning_content(event: Any) -> bool:
    """Set ``reasoning_content`` beside each choice's ``reasoning`` (in ``delta`` or
    ``message``) in place; whether any was set."""
    added = False
    choices = event.get("choices") if isinstance(event, dict) else None
    for choice in choices if isinstance(choices, list) else []:
        for key in ("delta", "message"):
            part = choice.get(key) if isinstance(choice, dict) else None
            if isinstance(part, dict) and part.get("reasoning") and "reasoning_content" not in part:
                part["reasoning_content"] = part["reasoning"]
                added = True
    return added


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
            and b'"reasoning"' not in data
            # vllm-mlx sends "usage":null in every event: only an object is noted
            and (b'"usage"' not in data or _USAGE_OBJECT.search(data) is None)
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
        if '"reasoning"' in payload:
            line = "data: " + with_reasoning_content(payload)
        member = _MODEL_MEMBER.search(line)
        if member is None:
            return line
        self._seen = member.group().encode()
        return line[: member.start()] + self._member + line[member.end() :]


def error_event(problem: str) -> bytes:
    """The event that ends a stream whose model server failed (no ``[DONE]`` after
    it: OpenAI clients raise on it)."""
    failure = {"error": {"message": problem, "type": "server_error"}}
    return b"data: " + json.dumps(failure).encode() + b"\n\n"


class SseBody:
    """What an OpenAI client gets for a ``RawStream``'s body (a ``paced.Body``): the
    events with ``model`` rewritten by ``relay``, and an error event for a body that
    fails or ends early. Tells ``upstream`` when its answer was whole."""

    complete = False  # the body is read to its end, as it always was

    def __init__(
        self,
        relay: SseRelay,
        upstream: RawStream,
        lost: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.relay = relay
        self._upstream = upstream
        self._lost = lost  # why the server went away under the stream, if it did

    def feed(self, data: bytes) -> bytes:
        some = self.relay.feed_bytes(data, time.monotonic())
        if some and self.relay.done:
            self._upstream.answered()
        return some

    def end(self) -> bytes:
        rest = self.relay.end(time.monotonic()) or b""
        return rest if self.relay.done else rest + error_event(self._lost() or EARLY_END)

    def fail(self, problem: str) -> bytes:
        return error_event(self._lost() or problem)
