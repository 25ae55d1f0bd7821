"""Relaying a model server's answer to the client, and counting it once it ends.

Ollama's NDJSON is translated from the backend's SSE (:func:`ollama_chunks`
for a whole answer, :class:`NdjsonBody` per read for a paced stream); the
OpenAI endpoints' SSE is passed through with ``model`` rewritten to the name
the client used (``sse.SseRelay``). A stream is counted for its model (status,
tokens, time to first token) when it closes; a backend that dies mid-stream
ends it with an error line or event. ``inference.py`` shapes the requests and
opens the streams these relay.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Protocol

import httpx
from starlette.responses import Response

from mlx_lama.gateway import ollama_answers as answers
from mlx_lama.gateway.core import Gateway
from mlx_lama.gateway.engine_calls import Target, lost_reason
from mlx_lama.gateway.http import JsonObject
from mlx_lama.gateway.paced import PacedStream
from mlx_lama.gateway.proxy import EARLY_END, ProxyStream, RawStream, UpstreamError, describe
from mlx_lama.gateway.sse import SseBody, SseEvents, SseRelay, error_event, sse_events

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"


def _now() -> datetime:
    return datetime.now(UTC)


def _flush_interval(gateway: Gateway) -> float:
    """The shortest time between two writes of a token stream, in seconds."""
    return gateway.manifest.server.flush_interval.seconds


# -- Ollama's NDJSON


def ollama_stream(
    gateway: Gateway,
    target: Target,
    upstream: RawStream | httpx.Response,
    translator: answers.StreamTranslator,
    *,
    model: str,
    endpoint: str,
    started: float,
) -> Response:
    """Ollama's NDJSON answer from an opened backend stream, counted for manifest
    model ``model`` and ``endpoint`` when it closes."""

    async def lines() -> AsyncIterator[bytes]:
        try:
            async for chunk in ollama_chunks(upstream, translator):
                yield answers.ndjson_line(chunk)
        except (UpstreamError, httpx.HTTPError) as error:
            yield answers.ndjson_line({"error": describe(error)})

    async def close(status: int) -> None:
        # Counted before the upstream close, which takes a turn of the event loop:
        # a client that sends its next request on seeing the end finds this one counted.
        try:
            target.release()
            record(gateway, model, endpoint, status, started, translator)
        finally:
            await upstream.aclose()

    if isinstance(upstream, RawStream):  # bytes as they arrive, at a bounded pace
        body = NdjsonBody(upstream, translator, lost_reason(model, target))
        return PacedStream(
            upstream,
            body,
            media_type=NDJSON,
            on_close=close,
            flush_interval=_flush_interval(gateway),
        )
    return ProxyStream(lines(), media_type=NDJSON, on_close=close)


async def ollama_chunks(
    upstream: RawStream | httpx.Response, translator: answers.StreamTranslator
) -> AsyncIterator[JsonObject]:
    """Ollama's chunks of a backend's token stream, the final one last."""
    async for event in sse_events(upstream):
        for chunk in translator.feed(event, time.monotonic(), _now()):
            yield chunk
    yield translator.finish(time.monotonic(), _now())


class NdjsonBody:
    """The NDJSON lines of a ``RawStream``'s token stream (a ``paced.Body``), as ``lines``
    in :func:`ollama_stream` makes them from ``sse_events``, but per read: the lines
    of the events it completes together (the last with the final chunk, and then the
    body is complete), and for what ``sse_events`` raises, the error line after the
    lines of the events before."""

    def __init__(
        self,
        upstream: RawStream,
        translator: answers.StreamTranslator,
        lost: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._upstream = upstream
        self._translator = translator
        self._events = SseEvents()
        self._lost = lost  # why the server went away under the stream, if it did
        self.complete = False

    def feed(self, data: bytes) -> bytes:
        return self._lines(self._events.feed(data))

    def end(self) -> bytes:
        return self._lines(self._events.end())

    def fail(self, problem: str) -> bytes:
        self.complete = True
        return answers.ndjson_line({"error": self._lost() or problem})

    def _lines(self, events: list[JsonObject]) -> bytes:
        translator, lines = self._translator, b""
        for event in events:
            lines += translator.feed_ndjson(event, time.monotonic(), datetime.now(UTC))
        if self._events.done:
            self.complete = True
            self._upstream.answered()
            return lines + answers.ndjson_line(translator.finish(time.monotonic(), _now()))
        if self._events.failure is not None:
            return lines + self.fail(describe(self._events.failure))
        return lines


def record(
    gateway: Gateway,
    model: str,
    endpoint: str,
    status: int,
    started: float,
    translator: Counted | None = None,
) -> None:
    """Count a finished Ollama answer for ``model``, with the tokens and time to first
    token its ``translator`` saw."""
    if translator is None:
        gateway.finished(model, endpoint, status, time.monotonic() - started)
        return
    first = translator.first_token
    gateway.finished(
        model,
        endpoint,
        status,
        time.monotonic() - started,
        tokens=(translator.prompt_tokens, translator.completion_tokens),
        first_token=None if first is None else first - started,
    )


# -- other APIs' events, translated (Anthropic Messages, OpenAI Responses)


class Counted(Protocol):
    """What a finished answer is counted with."""

    @property
    def first_token(self) -> float | None: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...


class Translation(Counted, Protocol):
    """A backend's chat stream as another API's events (``anthropic_answers.py``,
    ``responses_answers.py``): its opening events, those of each backend event, its
    closing ones, or the event that ends a failed stream."""

    def start(self) -> bytes: ...
    def feed(self, event: JsonObject, now: float) -> bytes: ...
    def finish(self) -> bytes: ...
    def fail(self, problem: str) -> bytes: ...


def translated_stream(
    gateway: Gateway,
    target: Target,
    upstream: RawStream | httpx.Response,
    translation: Translation,
    *,
    model: str,
    endpoint: str,
    started: float,
) -> Response:
    """An opened backend stream as ``translation``'s server-sent events, counted for
    manifest model ``model`` and ``endpoint`` when it closes."""
    lost = lost_reason(model, target)

    async def events() -> AsyncIterator[bytes]:
        yield translation.start()
        try:
            async for event in sse_events(upstream):
                if chunk := translation.feed(event, time.monotonic()):
                    yield chunk
        except (UpstreamError, httpx.HTTPError) as error:
            yield translation.fail(lost() or describe(error))
            return
        if isinstance(upstream, RawStream):
            upstream.answered()
        yield translation.finish()

    async def close(status: int) -> None:
        try:  # counted before the upstream close, as in ollama_stream
            target.release()
            record(gateway, model, endpoint, status, started, translation)
        finally:
            await upstream.aclose()

    return ProxyStream(events(), media_type=SSE, on_close=close)


async def translate_whole(upstream: RawStream | httpx.Response, translation: Translation) -> None:
    """Feed a whole backend stream to ``translation`` (for an answer given at once)."""
    async for event in sse_events(upstream):
        translation.feed(event, time.monotonic())
    if isinstance(upstream, RawStream):
        upstream.answered()


# -- OpenAI's SSE


def openai_stream(
    gateway: Gateway,
    target: Target,
    upstream: RawStream | httpx.Response,
    *,
    name: str,
    model: str,
    path: str,
    started: float,
) -> Response:
    """The backend's SSE from an opened stream, with ``model`` rewritten to ``name``
    (the name the client used), counted for manifest model ``model`` when it closes."""
    relay = SseRelay(name)

    async def events() -> AsyncIterator[bytes]:
        try:
            async for line in upstream.aiter_lines():
                event = relay.feed(line, time.monotonic())
                if event is not None:
                    yield event
            rest = relay.flush()
        except (UpstreamError, httpx.HTTPError) as error:
            yield error_event(describe(error))
            return
        if rest is not None:
            yield rest
        if not relay.done:
            yield error_event(EARLY_END)

    async def close(status: int) -> None:
        try:  # counted before the upstream close, as in ollama_stream
            target.release()
            first = relay.first_content
            gateway.finished(
                model,
                path,
                status,
                time.monotonic() - started,
                tokens=usage_tokens({"usage": relay.usage}),
                first_token=None if first is None else first - started,
            )
        finally:
            await upstream.aclose()

    if isinstance(upstream, RawStream):  # bytes as they arrive, at a bounded pace
        return PacedStream(
            upstream,
            SseBody(relay, upstream, lost_reason(model, target)),
            media_type=SSE,
            on_close=close,
            flush_interval=_flush_interval(gateway),
        )
    return ProxyStream(events(), media_type=SSE, on_close=close)


# -- whole answers


def usage_tokens(event: JsonObject) -> tuple[int, int] | None:
    """(prompt, completion) tokens of an OpenAI ``usage`` object, None without one."""
    usage = event.get("usage")
    if not isinstance(usage, dict):
        return None
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


async def json_of(_target: Target, response: httpx.Response) -> JsonObject:
    """A backend's whole (not streamed) answer, which must be a JSON object."""
    try:
        data = json.loads(await response.aread())
    except ValueError:
        raise UpstreamError("model server sent a body that is not JSON") from None
    if not isinstance(data, dict):
        raise UpstreamError("model server sent an unexpected body")
    return data
