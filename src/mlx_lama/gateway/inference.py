"""The routes that run a model: Ollama chat/generate/embed and the OpenAI endpoints.

Each resolves the request's model through the manifest, waits for its server
(the scheduler starts it on demand), rewrites ``model`` to what that server
serves (stripping anything that would make it load something else), and
streams the answer back: Ollama's NDJSON translated from the backend's SSE,
or the backend's SSE passed through with ``model`` rewritten to the name the
client used. A client that goes away cancels the backend request; a backend
that dies mid-stream ends the stream with an error line or event. A model
that only a remote gateway serves is forwarded there as it is (``routed``).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive

from mlx_lama.gateway import forward, ollama
from mlx_lama.gateway.core import Gateway, InvalidName, Route, UnknownModel
from mlx_lama.gateway.http import ApiError, JsonObject, check_sampling, read_json
from mlx_lama.gateway.proxy import (
    CONNECT_TIMEOUT,
    EARLY_END,
    ProxyStream,
    RawStream,
    UpstreamError,
    backend_body,
    describe,
    open_upstream,
    until_disconnect,
)
from mlx_lama.gateway.push import PushedStream
from mlx_lama.gateway.scheduler import Lease, SchedulerError
from mlx_lama.gateway.sse import SseBody, SseEvents, SseRelay, error_event, sse_events
from mlx_lama.schema.units import Duration

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


@dataclass(slots=True)
class Call:
    """One request to a model route, however it arrived (a Starlette route, or the
    hot path that skips Starlette, see ``hotpath.py``): its body already read."""

    gateway: Gateway
    path: str
    body: JsonObject
    receive: Receive  # the client's next ASGI message is its disconnect
    started: float  # monotonic time the request arrived
    model: str = ""  # the manifest model it was routed to, once resolved


Handler = Callable[[Call], Awaitable[Response]]


def counted(handler: Handler) -> Handler:
    """``handler``, with its error answers counted for the model it was routed to
    (successful ones count themselves, with their tokens, when they finish)."""

    async def run(call: Call) -> Response:
        try:
            return await handler(call)
        except ApiError as error:
            seconds = time.monotonic() - call.started
            call.gateway.finished(call.model, call.path, error.status, seconds)
            raise

    return run


def routed(handler: Handler) -> Handler:
    """``handler`` for this manifest's models; a model that only one of the manifest's
    ``[remotes]`` serves goes to that gateway as it is (see ``forward.py``)."""

    async def run(call: Call) -> Response:
        gateway = call.gateway
        if not gateway.remotes:
            return await handler(call)
        remote = await forward.remote_for(gateway, call.body.get("model"), explain_missing=True)
        if remote is None:
            return await handler(call)
        call.model = remote.name
        request = ("POST", call.path, call.body)
        return await forward.forward(gateway, remote, request, call.receive, call.started)

    return run


def endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """``handler`` as a Starlette endpoint."""

    async def route(request: Request) -> Response:
        started = time.monotonic()
        gateway = gateway_of(request)
        body = await read_json(request)
        return await handler(Call(gateway, request.url.path, body, request.receive, started))

    return route


def resolve(gateway: Gateway, name: object) -> Route:
    try:
        return gateway.resolve(name)
    except InvalidName as error:
        raise ApiError(400, str(error)) from None
    except UnknownModel as error:
        raise ApiError(404, str(error)) from None


@dataclass(slots=True)
class Target:
    """Where one request goes: a leased server, or an external one."""

    base_url: str
    served_model: str | None
    lease: Lease | None
    waited: float

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()


async def acquire(gateway: Gateway, route: Route, keep_alive: Duration | None) -> Target:
    if route.kind == "external":
        return Target(str(route.url), route.name, None, 0.0)
    if route.kind == "never":
        raise ApiError(
            400,
            f"model '{route.name}' is not served (serve = \"never\" in mlxlama.toml); "
            'set serve = "on-demand" to use it',
        )
    try:
        lease = await gateway.scheduler.acquire(route.name, keep_alive)
    except SchedulerError as error:
        raise ApiError(error.status, str(error)) from None
    return Target(lease.base_url, lease.served_model, lease, lease.waited)


Upstream = TypeVar("Upstream")


async def _leased(
    gateway: Gateway,
    route: Route,
    keep_alive: Duration | None,
    open_on: Callable[[Target], Awaitable[Upstream]],
) -> tuple[Target, Upstream]:
    """Lease the model's server and open a request on it. When the server answered
    nothing and its process turns out to be gone, it is restarted (see
    :meth:`Scheduler.lost`) and the request sent once more."""
    for attempt in (1, 2):
        target = await acquire(gateway, route, keep_alive)
        try:
            response = await open_on(target)
        except UpstreamError as error:
            target.release()
            lease = target.lease
            retry = attempt == 1 and error.connect and lease is not None
            if retry and lease is not None and await gateway.scheduler.lost(lease.slot):
                continue
            raise ApiError(error.status, str(error)) from None
        except BaseException:
            target.release()
            raise
        return target, response
    raise AssertionError("unreachable")  # pragma: no cover


async def post(
    gateway: Gateway, route: Route, path: str, body: JsonObject, keep_alive: Duration | None
) -> tuple[Target, httpx.Response]:
    """POST ``body`` to ``path`` on the model's server (whole answers)."""
    client = gateway.client
    assert client is not None

    async def open_on(target: Target) -> httpx.Response:
        payload = backend_body(body, target.served_model)
        return await open_upstream(client, target.base_url + path, payload)

    return await _leased(gateway, route, keep_alive, open_on)


async def post_stream(
    gateway: Gateway, route: Route, path: str, body: JsonObject, keep_alive: Duration | None
) -> tuple[Target, RawStream | httpx.Response]:
    """POST ``body`` to ``path`` for a token stream: read off the socket directly for
    plain-HTTP servers (all the engines mlx-lama starts), through httpx otherwise."""
    client = gateway.client
    assert client is not None

    async def open_on(target: Target) -> RawStream | httpx.Response:
        payload = backend_body(body, target.served_model)
        if target.base_url.startswith("http://"):
            # Connections made ahead only to the servers mlx-lama runs (see spares.py).
            spares = gateway.spares if target.lease is not None else None
            return await RawStream.open(
                target.base_url + path, payload, connect_timeout=CONNECT_TIMEOUT, spares=spares
            )
        return await open_upstream(client, target.base_url + path, payload)

    return await _leased(gateway, route, keep_alive, open_on)


def _now() -> datetime:
    return datetime.now(UTC)


# -- Ollama /api/chat and /api/generate


@counted
@routed
async def chat(call: Call) -> Response:
    return await _ollama_run(call, "chat")


@counted
@routed
async def generate(call: Call) -> Response:
    return await _ollama_run(call, "generate")


async def _ollama_run(call: Call, kind: str) -> Response:
    gateway, body, started = call.gateway, call.body, call.started
    route = resolve(gateway, body.get("model"))
    call.model = route.name
    name = str(body["model"])
    try:
        keep_alive = ollama.parse_keep_alive(body.get("keep_alive"))
        if kind == "chat":
            empty = not body.get("messages")
            path = "/v1/chat/completions"
            if not empty:
                openai = ollama.chat_request(body, route.defaults, None)
        else:
            empty = not body.get("prompt") and not body.get("images")
            if not empty:
                path, openai = ollama.generate_request(body, route.defaults, None)
    except ollama.RequestError as error:
        raise ApiError(400, str(error)) from None
    if empty:
        return await _load_only(gateway, route, name, kind, keep_alive, started)
    return await _ollama_answer(call, (route, name, kind), path, openai, keep_alive)


async def _ollama_answer(
    call: Call,
    what: tuple[Route, str, str],  # the route, the name the client used, "chat" or "generate"
    path: str,
    openai: JsonObject,
    keep_alive: Duration | None,
) -> Response:
    gateway, started = call.gateway, call.started
    route, name, kind = what
    check_sampling(openai)
    stream = openai["stream"]
    openai["stream"] = True  # always stream from the backend: usage and cancellation
    openai["stream_options"] = {"include_usage": True}
    target, upstream = await post_stream(gateway, route, path, openai, keep_alive)
    translator = ollama.StreamTranslator(
        model=name, kind=kind, started=started, loaded=started + target.waited
    )
    endpoint = f"/api/{kind}"

    async def chunks() -> AsyncIterator[JsonObject]:
        async for event in sse_events(upstream):
            for chunk in translator.feed(event, time.monotonic(), _now()):
                yield chunk
        yield translator.finish(time.monotonic(), _now())

    def record(status: int) -> None:
        _record(gateway, route.name, endpoint, status, started, translator)

    if stream:

        async def lines() -> AsyncIterator[bytes]:
            try:
                async for chunk in chunks():
                    yield ollama.ndjson_line(chunk)
            except (UpstreamError, httpx.HTTPError) as error:
                yield ollama.ndjson_line({"error": describe(error)})

        async def close() -> None:
            # Counted before the upstream close, which takes a turn of the event loop:
            # a client that sends its next request on seeing the end finds this one counted.
            try:
                target.release()
                record(200)
            finally:
                await upstream.aclose()

        if isinstance(upstream, RawStream):  # bytes as they arrive, pushed where it can be
            body = _NdjsonBody(upstream, translator)
            return PushedStream(
                upstream,
                body,
                media_type=NDJSON,
                on_close=close,
                flush_interval=_flush_interval(gateway),
            )
        return ProxyStream(lines(), media_type=NDJSON, on_close=close)

    async def collect() -> JsonObject:
        parts = [chunk async for chunk in chunks()]
        return ollama.merge_stream(parts, kind)

    try:
        merged = await _guarded(call.receive, collect)
    finally:
        await upstream.aclose()
        target.release()
    if merged is None:
        record(499)
        return Response(status_code=499)
    record(200)
    return JSONResponse(merged)


class _NdjsonBody:
    """The NDJSON lines of a ``RawStream``'s token stream (a ``push.Body``), as ``lines``
    in :func:`_ollama_answer` makes them from ``sse_events``, but per read: the lines
    of the events it completes together (the last with the final chunk, and then the
    body is complete), and for what ``sse_events`` raises, the error line after the
    lines of the events before."""

    def __init__(self, upstream: RawStream, translator: ollama.StreamTranslator) -> None:
        self._upstream = upstream
        self._translator = translator
        self._events = SseEvents()
        self.complete = False

    def feed(self, data: bytes) -> bytes:
        return self._lines(self._events.feed(data))

    def end(self) -> bytes:
        return self._lines(self._events.end())

    def fail(self, problem: str) -> bytes:
        self.complete = True
        return ollama.ndjson_line({"error": problem})

    def _lines(self, events: list[JsonObject]) -> bytes:
        translator, lines = self._translator, b""
        for event in events:
            lines += translator.feed_ndjson(event, time.monotonic(), datetime.now(UTC))
        if self._events.done:
            self.complete = True
            self._upstream.answered()
            return lines + ollama.ndjson_line(translator.finish(time.monotonic(), _now()))
        if self._events.failure is not None:
            return lines + self.fail(describe(self._events.failure))
        return lines


async def _guarded(
    receive: Receive, work: Callable[[], Awaitable[JsonObject]]
) -> JsonObject | None:
    """``work`` cancelled if the client leaves; upstream failures become 502."""
    try:
        return await until_disconnect(receive, work)
    except (UpstreamError, httpx.HTTPError) as error:
        raise ApiError(502, describe(error)) from None


def _record(
    gateway: Gateway,
    model: str,
    endpoint: str,
    status: int,
    started: float,
    translator: ollama.StreamTranslator | None = None,
) -> None:
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


async def _load_only(
    gateway: Gateway,
    route: Route,
    name: str,
    kind: str,
    keep_alive: Duration | None,
    started: float,
) -> Response:
    """An empty prompt loads the model; with ``keep_alive: 0`` it unloads it instead."""
    if keep_alive is not None and keep_alive.seconds == 0:
        if route.kind == "server":
            await gateway.scheduler.unload(route.name, reason="keep_alive 0")
        reason = "unload"
    else:
        target = await acquire(gateway, route, keep_alive)
        target.release()
        reason = "load"
    answer: JsonObject = {"model": name, "created_at": ollama.created_at(_now())}
    if kind == "chat":
        answer["message"] = {"role": "assistant", "content": ""}
    else:
        answer["response"] = ""
    answer.update(done=True, done_reason=reason)
    gateway.finished(route.name, f"/api/{kind}", 200, time.monotonic() - started)
    return JSONResponse(answer)


# -- Ollama /api/embed and /api/embeddings


@counted
@routed
async def embed(call: Call) -> Response:
    return await _ollama_embed(call, legacy=False)


@counted
@routed
async def embeddings(call: Call) -> Response:
    return await _ollama_embed(call, legacy=True)


async def _ollama_embed(call: Call, *, legacy: bool) -> Response:
    gateway, body, started = call.gateway, call.body, call.started
    route = resolve(gateway, body.get("model"))
    call.model = route.name
    name = str(body["model"])
    if not gateway.embeddings_capable(route):
        raise ApiError(400, f'"{name}" does not support embeddings')
    try:
        keep_alive = ollama.parse_keep_alive(body.get("keep_alive"))
    except ollama.RequestError as error:
        raise ApiError(400, str(error)) from None
    given = body.get("prompt") if legacy else body.get("input")
    if given is not None and not isinstance(given, str | list):
        raise ApiError(400, "input must be a string or a list of strings")
    inputs = [given] if isinstance(given, str) else list(given or [])
    if not inputs or inputs == [""]:
        target = await acquire(gateway, route, keep_alive)
        target.release()
        return JSONResponse({"embedding": []} if legacy else {"model": name, "embeddings": []})
    upstream_body: JsonObject = {"input": inputs}
    if body.get("dimensions") is not None:
        upstream_body["dimensions"] = body["dimensions"]
    target, data = await _whole_answer(
        call.receive, gateway, route, ("/v1/embeddings", upstream_body), keep_alive
    )
    if data is None:
        return Response(status_code=499)
    vectors = [item.get("embedding") for item in sorted(data.get("data") or [], key=_index)]
    gateway.finished(route.name, call.path, 200, time.monotonic() - started)
    if legacy:
        return JSONResponse({"embedding": vectors[0] if vectors else []})
    usage = data.get("usage") or {}
    return JSONResponse(
        {
            "model": name,
            "embeddings": vectors,
            "total_duration": round((time.monotonic() - started) * 1e9),
            "load_duration": round(target.waited * 1e9),
            "prompt_eval_count": int(usage.get("prompt_tokens") or 0),
        }
    )


async def _whole_answer(
    receive: Receive,
    gateway: Gateway,
    route: Route,
    call: tuple[str, JsonObject],  # path and body
    keep_alive: Duration | None,
) -> tuple[Target, JsonObject | None]:
    """A non-streamed backend answer as JSON (None: the client left, and the backend
    request was cancelled). The lease is released before this returns."""
    path, body = call
    target, upstream = await post(gateway, route, path, body, keep_alive)
    try:
        return target, await _guarded(receive, lambda: _json_of(upstream))
    finally:
        await upstream.aclose()
        target.release()


def _index(item: Any) -> int:
    return int(item.get("index", 0)) if isinstance(item, dict) else 0


async def _json_of(response: httpx.Response) -> JsonObject:
    try:
        data = json.loads(await response.aread())
    except ValueError:
        raise UpstreamError("model server sent a body that is not JSON") from None
    if not isinstance(data, dict):
        raise UpstreamError("model server sent an unexpected body")
    return data


# -- OpenAI /v1/chat/completions, /v1/completions, /v1/embeddings


@counted
@routed
async def openai(call: Call) -> Response:
    gateway, path, body, started = call.gateway, call.path, call.body, call.started
    route = resolve(gateway, body.get("model"))
    call.model = route.name
    name = str(body["model"])
    if path == "/v1/embeddings" and not gateway.embeddings_capable(route):
        raise ApiError(400, f"model '{name}' does not support embeddings")
    check_sampling(body)
    if body.get("stream") is True:
        return await _openai_stream(gateway, route, name, path, body, started)
    _target, data = await _whole_answer(call.receive, gateway, route, (path, body), None)
    if data is None:
        return Response(status_code=499)
    if "model" in data:
        data["model"] = name
    gateway.finished(route.name, path, 200, time.monotonic() - started, tokens=_usage(data))
    return JSONResponse(data)


async def _openai_stream(
    gateway: Gateway, route: Route, name: str, path: str, body: JsonObject, started: float
) -> Response:
    target, upstream = await post_stream(gateway, route, path, body, None)
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

    async def close() -> None:
        try:  # counted before the upstream close, as in _ollama_answer
            target.release()
            first = relay.first_content
            gateway.finished(
                route.name,
                path,
                200,
                time.monotonic() - started,
                tokens=_usage({"usage": relay.usage}),
                first_token=None if first is None else first - started,
            )
        finally:
            await upstream.aclose()

    if isinstance(upstream, RawStream):  # bytes as they arrive, pushed where it can be
        return PushedStream(
            upstream,
            SseBody(relay, upstream),
            media_type=SSE,
            on_close=close,
            flush_interval=_flush_interval(gateway),
        )
    return ProxyStream(events(), media_type=SSE, on_close=close)


def _flush_interval(gateway: Gateway) -> float:
    """The shortest time between two writes of a token stream, in seconds."""
    return gateway.manifest.server.flush_interval.seconds


def _usage(event: JsonObject) -> tuple[int, int] | None:
    """(prompt, completion) tokens of an OpenAI ``usage`` object, None without one."""
    usage = event.get("usage")
    if not isinstance(usage, dict):
        return None
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


# -- the routes

ollama_chat = endpoint(chat)
ollama_generate = endpoint(generate)
ollama_embed = endpoint(embed)
ollama_embeddings = endpoint(embeddings)
openai_proxy = endpoint(openai)

# The token-streaming routes (POST), which ``hotpath.HotPath`` serves without Starlette.
STREAMING: dict[str, Handler] = {
    "/api/chat": chat,
    "/api/generate": generate,
    "/v1/chat/completions": openai,
    "/v1/completions": openai,
}
