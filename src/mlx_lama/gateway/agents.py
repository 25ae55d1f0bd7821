"""The routes coding agents call: Anthropic Messages and OpenAI Responses.

Claude Code speaks ``POST /v1/messages`` (and ``/v1/messages/count_tokens``),
Codex ``POST /v1/responses``. Each request is turned into the chat-completions
request a model server takes (``anthropic.py``, ``responses.py``), checked like
any other (``validate.py``), given what the manifest entry adds (its system
prompt, messages and parameters, as on every API), and sent as a token stream;
the stream is translated back (``anthropic_answers.py``,
``responses_answers.py``) as server-sent events, or gathered into one answer.
Resolving, retries, cancellation and counting are ``inference.py``'s, as for
the Ollama and OpenAI routes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mlx_lama.gateway import anthropic, ollama, relay, validate
from mlx_lama.gateway import responses as responses_request
from mlx_lama.gateway.anthropic_answers import MessageStream
from mlx_lama.gateway.core import Gateway, Route
from mlx_lama.gateway.engine_calls import Target, open_stream, post, post_stream
from mlx_lama.gateway.http import ApiError, JsonObject
from mlx_lama.gateway.inference import (
    Call,
    attended,
    check_output_format,
    counted,
    endpoint,
    resolve,
    routed,
    thinking_fields,
)
from mlx_lama.gateway.proxy import RawStream
from mlx_lama.gateway.responses_answers import ResponseStream

CHAT = "/v1/chat/completions"


class Answer(relay.Translation, Protocol):
    def whole(self) -> JsonObject: ...


def chat_body(
    gateway: Gateway,
    route: Route,
    name: str,  # the model name the client used
    request: JsonObject,
    think: tuple[str, object],  # the thinking switch's key in the client's API, and its value
    format_key: str = "response_format",  # JSON output's key in the client's API
) -> JsonObject:
    """``request`` (chat completions, from another API) checked, with the manifest
    entry's additions and the thinking switch, ready for the model server."""
    limits = gateway.limits(route)
    body = validate.openai_body(CHAT, request, limits, name)
    check_output_format(gateway, route, name, body, format_key)
    body = ollama.with_manifest(body, route.defaults, limits.context)
    template = gateway.chat_template(route)
    body = ollama.with_template_roles(body, template)
    key, value = think
    body.update(thinking_fields(template, value, name, key))
    return body


async def answer(call: Call, route: Route, body: JsonObject, new: Callable[[], Answer]) -> Response:
    """Send ``body`` for a token stream and answer with ``new()``'s translation of it:
    as events when the client asked for a stream, else whole."""
    gateway = call.gateway
    stream = body.get("stream") is True
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    if stream:
        target, upstream = await open_stream(gateway, route, (CHAT, body), None)
        return relay.translated_stream(
            gateway,
            target,
            upstream,
            new(),
            model=route.name,
            endpoint=call.path,
            started=call.started,
        )

    async def gather(_target: Target, upstream: RawStream | httpx.Response) -> Answer:
        translation = new()  # a fresh one for each attempt
        await relay.translate_whole(upstream, translation)
        return translation

    _target, done = await post_stream(gateway, route, (CHAT, body), None, gather)
    relay.record(gateway, route.name, call.path, 200, call.started, done)
    return JSONResponse(done.whole())


def _resolved(call: Call) -> tuple[Route, str]:
    """The route of the request's model, noted on ``call``, and the name it used."""
    route = resolve(call.gateway, call.body.get("model"))
    call.model = route.name
    return route, str(call.body["model"])


# -- Anthropic /v1/messages and /v1/messages/count_tokens


@counted
@routed
@attended
async def messages(call: Call) -> Response:
    body = call.body
    route, name = _resolved(call)
    request = anthropic.chat_request(body)
    think = ("thinking", anthropic.thinking_wanted(body))
    chat = chat_body(call.gateway, route, name, request, think)
    return await answer(call, route, chat, lambda: MessageStream(name))


@counted
@routed
@attended
async def count_tokens(call: Call) -> Response:
    """The prompt's tokens, as the model's own template and tokenizer count them: the
    model server reads the request and stops after one token."""
    body = call.body
    route, name = _resolved(call)
    request = anthropic.chat_request(body, counting=True)
    think = ("thinking", anthropic.thinking_wanted(body))
    chat = chat_body(call.gateway, route, name, request, think)
    chat.update(max_tokens=1, stream=False)
    chat.pop("stream_options", None)
    _target, data = await post(call.gateway, route, (CHAT, chat), None, relay.json_of)
    usage = data.get("usage")
    if not isinstance(usage, dict) or not isinstance(usage.get("prompt_tokens"), int):
        raise ApiError(502, "the model server did not say how many tokens the prompt has")
    call.gateway.finished(route.name, call.path, 200, time.monotonic() - call.started)
    return JSONResponse({"input_tokens": usage["prompt_tokens"]})


# -- OpenAI /v1/responses


@counted
@routed
@attended
async def responses(call: Call) -> Response:
    body = call.body
    route, name = _resolved(call)
    request = responses_request.chat_request(body)
    think = ("reasoning.effort", responses_request.thinking_wanted(body))
    chat = chat_body(call.gateway, route, name, request, think, format_key="text.format")
    created = time.time()
    return await answer(call, route, chat, lambda: ResponseStream(name, body, created))


async def response_by_id(_request: Request) -> Response:
    """``GET /v1/responses/{id}``: never found, as the gateway keeps no responses."""
    raise ApiError(404, f"no such response: {responses_request.STATELESS}")


# -- the routes

anthropic_messages = endpoint(messages)
anthropic_count_tokens = endpoint(count_tokens)
openai_responses = endpoint(responses)
