"""The routes that run a model: Ollama chat/generate/embed and the OpenAI endpoints.

Each resolves the request's model through the manifest, checks the request
(``validate.py``: nothing an engine would choke on reaches it), waits for its
server (the scheduler starts it on demand; ``engine_calls.py`` sends it and
decides about retries), rewrites ``model`` to what that server serves
(stripping anything that would make it load something else), and hands the
answer to ``relay.py``, which streams it back: Ollama's NDJSON translated from
the backend's SSE, or the backend's SSE passed through. A client that goes
away cancels the whole request, wherever it is (``attended``). A model that
only a remote gateway serves is forwarded there as it is (``routed``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive

from mlx_lama.gateway import fim, forward, ollama, relay, validate
from mlx_lama.gateway import ollama_answers as answers
from mlx_lama.gateway.core import Gateway, InvalidName, Route, UnknownModel
from mlx_lama.gateway.engine_calls import Target, acquire, open_stream, post, post_stream
from mlx_lama.gateway.http import CLIENT_GONE, ApiError, JsonObject, read_json
from mlx_lama.gateway.proxy import RawStream, until_disconnect
from mlx_lama.gateway.sse import add_reasoning_content
from mlx_lama.units import Duration


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


@dataclass(slots=True)
class Call:
    """One request to a model route (from its Starlette route): its body already read."""

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


def attended(handler: Handler) -> Handler:
    """``handler``, cancelled the moment its client disconnects (answered 499): a
    client that leaves while its request waits for a start, a turn or a whole
    answer frees its place at once, its engine request is closed, and it is
    never sent again to a restarted server."""

    async def run(call: Call) -> Response:
        response = await until_disconnect(call.receive, lambda: handler(call))
        if response is not None:
            return response
        if call.model:
            seconds = time.monotonic() - call.started
            call.gateway.finished(call.model, call.path, CLIENT_GONE, seconds)
        return Response(status_code=CLIENT_GONE)

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


# -- Ollama /api/chat and /api/generate


@counted
@routed
@attended
async def chat(call: Call) -> Response:
    return await _ollama_run(call, "chat")


@counted
@routed
@attended
async def generate(call: Call) -> Response:
    return await _ollama_run(call, "generate")


async def _ollama_run(call: Call, kind: str) -> Response:
    gateway, body, started = call.gateway, call.body, call.started
    route = resolve(gateway, body.get("model"))
    call.model = route.name
    name = str(body["model"])
    limits = gateway.limits(route)
    try:
        keep_alive = ollama.parse_keep_alive(body.get("keep_alive"))
        if kind == "chat":
            empty = not body.get("messages")
            path = "/v1/chat/completions"
            if not empty:
                openai = ollama.chat_request(body, route.defaults, None, limits.context)
        else:
            empty = not body.get("prompt") and not body.get("images")
            if not empty:
                fill = _filler(gateway, route, name)
                path, openai = ollama.generate_request(
                    body, route.defaults, None, limits.context, fill
                )
    except ollama.RequestError as error:
        raise ApiError(400, str(error)) from None
    if empty:
        return await _load_only(gateway, route, name, kind, keep_alive, started)
    openai = validate.openai_body(path, openai, limits, name)
    check_output_format(gateway, route, name, openai, "format")
    if path == "/v1/chat/completions":
        openai.update(thinking_fields(gateway.chat_template(route), body.get("think"), name))
    return await _ollama_answer(call, (route, name, kind), path, openai, keep_alive)


def _filler(
    gateway: Gateway, route: Route, name: str
) -> Callable[[str, str], tuple[str, list[str]]]:
    """How a prefix and a suffix become the prompt of ``route``'s model
    (``fim.py``); 400 for a model without fill-in-the-middle tokens."""
    tokens = gateway.added_tokens(route)

    def fill(prefix: str, suffix: str) -> tuple[str, list[str]]:
        framed = None if tokens is None else fim.fim_prompt(tokens, prefix, suffix)
        if framed is None:
            if tokens is None:
                raise ApiError(
                    400,
                    f"model '{name}' is an external server's: the gateway cannot frame a "
                    "suffix for it; send its own fill-in-the-middle prompt with raw: true",
                )
            raise ApiError(400, fim.unsupported(name))
        return framed

    return fill


THINK_LEVELS = ("low", "medium", "high")  # gpt-oss's levels; Ollama takes them too


def thinking_fields(
    template: str | None, think: object, name: str, key: str = "think"
) -> JsonObject:
    """What Ollama's ``think`` (or another API's thinking switch, named ``key`` in the
    400) adds to the engine request: the chat template's own switch
    (``enable_thinking``, passed as ``chat_template_kwargs``) when it has one.
    Thinking asked of a model whose template shows no thinking is a 400, as in
    Ollama; ``think: false`` there changes nothing. A template not known here (an
    external server's) gets nothing added."""
    if think is None:
        return {}
    if not isinstance(think, bool) and think not in THINK_LEVELS:
        raise ApiError(400, f"{key} must be true, false or one of {', '.join(THINK_LEVELS)}")
    if template is None:
        return {}
    if "enable_thinking" in template:
        return {"chat_template_kwargs": {"enable_thinking": think is not False}}
    if think is not False and "<think>" not in template:
        raise ApiError(
            400,
            f"model '{name}' does not support thinking: its chat template has no thinking "
            f"switch; leave {key} out, or use a thinking model (Qwen3, DeepSeek-R1, gpt-oss)",
        )
    return {}


def check_output_format(
    gateway: Gateway, route: Route, name: str, body: JsonObject, field: str
) -> None:
    """400 for JSON output (Ollama ``format``, OpenAI ``response_format``) from an engine
    that cannot constrain its answer: it would come back as free text that does not
    parse, with a 200. Which engine can do it is the fix the message names."""
    wanted = body.get("response_format")
    if not isinstance(wanted, dict) or wanted.get("type") in (None, "text"):
        return
    if gateway.can(route, "structured_output"):
        return
    engine = gateway.engine_of(route) or "its engine"
    raise ApiError(
        400,
        f"model '{name}' runs on {engine}, which cannot constrain its answer to JSON "
        f'({field}); serve it with backend = "vllm-mlx" (guided decoding) for JSON '
        f"answers, or send the request without {field}",
    )


async def _ollama_answer(
    call: Call,
    what: tuple[Route, str, str],  # the route, the name the client used, "chat" or "generate"
    path: str,
    openai: JsonObject,
    keep_alive: Duration | None,
) -> Response:
    gateway, started = call.gateway, call.started
    route, name, kind = what
    stream = openai["stream"]
    openai["stream"] = True  # always stream from the backend: usage and cancellation
    openai["stream_options"] = {"include_usage": True}
    endpoint = f"/api/{kind}"

    def translator_for(target: Target) -> answers.StreamTranslator:
        return answers.StreamTranslator(
            model=name, kind=kind, started=started, loaded=started + target.waited
        )

    if not stream:
        translators: list[answers.StreamTranslator] = []  # one per attempt

        async def collect(target: Target, upstream: RawStream | httpx.Response) -> JsonObject:
            translators.append(translator := translator_for(target))
            parts = [chunk async for chunk in relay.ollama_chunks(upstream, translator)]
            return answers.merge_stream(parts, kind)

        _target, merged = await post_stream(gateway, route, (path, openai), keep_alive, collect)
        relay.record(gateway, route.name, endpoint, 200, started, translators[-1])
        return JSONResponse(merged)

    target, upstream = await open_stream(gateway, route, (path, openai), keep_alive)
    translator = translator_for(target)
    return relay.ollama_stream(
        gateway, target, upstream, translator, model=route.name, endpoint=endpoint, started=started
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
    answer: JsonObject = {"model": name, "created_at": answers.created_at(datetime.now(UTC))}
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
@attended
async def embed(call: Call) -> Response:
    return await _ollama_embed(call, legacy=False)


@counted
@routed
@attended
async def embeddings(call: Call) -> Response:
    return await _ollama_embed(call, legacy=True)


async def _ollama_embed(call: Call, *, legacy: bool) -> Response:
    gateway, body, started = call.gateway, call.body, call.started
    route = resolve(gateway, body.get("model"))
    call.model = route.name
    name = str(body["model"])
    limits = gateway.limits(route)
    try:
        keep_alive = ollama.parse_keep_alive(body.get("keep_alive"))
    except ollama.RequestError as error:
        raise ApiError(400, str(error)) from None
    given = body.get("prompt") if legacy else body.get("input")
    if given is not None and not isinstance(given, str | list):
        raise ApiError(400, "input must be a string or a list of strings")
    inputs = [given] if isinstance(given, str) else list(given or [])
    if not inputs or inputs == [""]:
        validate.check_serves(validate.EMBEDDINGS, limits, name)
        target = await acquire(gateway, route, keep_alive)
        target.release()
        return JSONResponse({"embedding": []} if legacy else {"model": name, "embeddings": []})
    upstream_body: JsonObject = {"input": inputs, "dimensions": body.get("dimensions")}
    if body.get("truncate") is not None and body["truncate"] is not True:
        upstream_body["truncate"] = body["truncate"]  # the engines' default is Ollama's: true
    upstream_body = validate.openai_body(validate.EMBEDDINGS, upstream_body, limits, name)
    target, data = await post(
        gateway, route, ("/v1/embeddings", upstream_body), keep_alive, relay.json_of
    )
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


def _index(item: Any) -> int:
    return int(item.get("index", 0)) if isinstance(item, dict) else 0


# -- OpenAI /v1/chat/completions, /v1/completions, /v1/embeddings


@counted
@routed
@attended
async def openai(call: Call) -> Response:
    gateway, path, body, started = call.gateway, call.path, call.body, call.started
    route = resolve(gateway, body.get("model"))
    call.model = route.name
    name = str(body["model"])
    limits = gateway.limits(route)
    if path == "/v1/completions" and isinstance(body.get("suffix"), str) and body["suffix"]:
        body = _filled(body, _filler(gateway, route, name))
    body = validate.openai_body(path, body, limits)
    check_output_format(gateway, route, name, body, "response_format")
    if path == "/v1/chat/completions":
        body = ollama.with_manifest(body, route.defaults, limits.context)
        body = ollama.with_template_roles(body, gateway.chat_template(route))
    if body.get("stream") is True:
        target, upstream = await open_stream(gateway, route, (path, body), None)
        return relay.openai_stream(
            gateway, target, upstream, name=name, model=route.name, path=path, started=started
        )
    _target, data = await post(gateway, route, (path, body), None, relay.json_of)
    if "model" in data:
        data["model"] = name
    add_reasoning_content(data)
    gateway.finished(
        route.name, path, 200, time.monotonic() - started, tokens=relay.usage_tokens(data)
    )
    return JSONResponse(data)


def _filled(body: JsonObject, fill: Callable[[str, str], tuple[str, list[str]]]) -> JsonObject:
    """An OpenAI completions body with ``suffix``: the prompt framed for the middle."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "suffix needs prompt as one string")
    framed, stops = fill(prompt, body["suffix"])
    stop = body.get("stop")
    given = [stop] if isinstance(stop, str) else list(stop or [])
    result = {key: value for key, value in body.items() if key != "suffix"}
    return result | {"prompt": framed, "stop": [*stops, *given]}


# -- the routes

ollama_chat = endpoint(chat)
ollama_generate = endpoint(generate)
ollama_embed = endpoint(embed)
ollama_embeddings = endpoint(embeddings)
openai_proxy = endpoint(openai)
