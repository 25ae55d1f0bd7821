"""Ollama's API in OpenAI terms, and back: pure shape translation for the gateway.

The model servers speak OpenAI. The gateway turns an Ollama ``/api/chat`` or
``/api/generate`` body into the OpenAI request a backend takes (manifest
defaults under the request's own values, options mapped, format and tools
translated); ``ollama_answers.py`` turns the backend's answer back. Wire facts
follow ``shared/docs/ollama-api.md``. Pure: no I/O, no clock reads, no logging.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mlx_lama.gateway.http import is_int
from mlx_lama.units import Duration

JsonObject = dict[str, Any]

# Ollama option -> the OpenAI (or MLX-server extension) request field.
OPTION_FIELDS: Mapping[str, str] = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "num_predict": "max_tokens",
    "stop": "stop",
    "seed": "seed",
    "repeat_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}
UNBOUNDED_ANSWER = 1_000_000  # max_tokens for "no limit" when the context length is not known


class RequestError(ValueError):
    """The request body is wrong; the message is what Ollama would say (HTTP 400)."""


@dataclass(frozen=True, slots=True)
class ModelDefaults:
    """What the manifest entry adds under every request: Modelfile SYSTEM, MESSAGE, PARAMETER."""

    system: str | None = None
    messages: tuple[Mapping[str, str], ...] = ()
    parameters: Mapping[str, object] = field(default_factory=dict)


def parse_keep_alive(value: object) -> Duration | None:
    """Ollama's ``keep_alive``: None when absent; seconds or a Go duration; negative = forever.

    A bare numeric string such as ``"300"`` is refused, as Ollama refuses it.
    """
    if value is None:
        return None
    try:
        return Duration.parse(value)
    except ValueError as exc:
        raise RequestError(f"invalid keep_alive: {exc}") from None


def options_to_fields(options: Mapping[str, object] | None) -> JsonObject:
    """Known Ollama options as OpenAI request fields; unknown ones are ignored, as Ollama does.

    ``num_predict`` and ``num_ctx`` are :func:`answer_limit`'s. A single ``stop``
    string becomes a list.
    """
    fields: JsonObject = {}
    for option, value in (options or {}).items():
        name = OPTION_FIELDS.get(option)
        if name is None or value is None or option == "num_predict":
            continue
        fields[name] = [value] if option == "stop" and isinstance(value, str) else value
    return fields


def answer_limit(
    options: Mapping[str, object] | None,
    parameters: Mapping[str, object],
    context: int | None,
) -> int | None:
    """``max_tokens`` for Ollama's ``num_predict`` and ``num_ctx`` (the request's
    ``options`` over the manifest's ``parameters``), None to leave the engine's
    default. ``num_predict`` -1 (until the context is full) and -2 (fill the
    context) become the context: ``num_ctx`` when given, else the model's
    ``context`` length. A positive ``num_predict`` is capped to it too (the
    answer stops where the context is full). ``num_ctx`` cannot resize the
    engine's cache per request: it bounds the answer, and one above the model's
    context length is refused. RequestError for values Ollama does not define."""
    options = options or {}
    window = context
    asked = options.get("num_ctx")
    if asked is not None:
        if not is_int(asked) or asked < 1:
            raise RequestError(
                f"invalid num_ctx {json.dumps(asked)}: use a positive number of tokens"
            )
        if context is not None and asked > context:
            raise RequestError(
                f"num_ctx {asked} is more than the model's context length of {context} tokens; "
                f"use at most {context}"
            )
        window = asked
    elif is_int(manifest_ctx := parameters.get("num_ctx")):
        window = min(manifest_ctx, context) if context is not None else manifest_ctx
    predict = options.get("num_predict")
    if predict is None:
        predict = parameters.get("num_predict")
    elif not is_int(predict) or predict == 0 or predict < -2:
        raise RequestError(
            f"invalid num_predict {json.dumps(predict)}: use a positive number of tokens, "
            "-1 (until the context is full) or -2 (fill the context)"
        )
    if not is_int(predict):
        return None
    if predict < 0:
        return window if window is not None else UNBOUNDED_ANSWER
    return min(predict, window) if window is not None else predict


def response_format(fmt: object) -> JsonObject | None:
    """Ollama ``format`` ("json" or a JSON schema) as OpenAI ``response_format``."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt}}
    raise RequestError(f'invalid format: {json.dumps(fmt)}; use "json" or a JSON schema')


def chat_request(
    body: Mapping[str, Any],
    defaults: ModelDefaults,
    served_model: str | None,
    context: int | None = None,
) -> JsonObject:
    """An Ollama ``/api/chat`` body as an OpenAI chat-completions body.

    The manifest's system prompt applies when the request brings none; its
    seeded messages come first; its parameters sit under the request's options.
    """
    messages = [_message(m) for m in _list(body.get("messages"), "messages")]
    messages = with_manifest_messages(messages, defaults)
    return _openai_body(body, defaults, (served_model, context), {"messages": messages})


SYSTEM_ROLES = ("system", "developer")  # OpenAI's newer name for the system turn


def with_manifest_messages(messages: list[JsonObject], defaults: ModelDefaults) -> list[JsonObject]:
    """``messages`` (chat turns, OpenAI's shape) with what the manifest entry adds, the
    same on every API: its system prompt first when the request brings none, then its
    seeded messages (Modelfile MESSAGE) after the system turn. A new list."""
    messages = list(messages)
    if defaults.system and not any(m.get("role") in SYSTEM_ROLES for m in messages):
        messages.insert(0, {"role": "system", "content": defaults.system})
    at = 1 if messages and messages[0].get("role") in SYSTEM_ROLES else 0
    messages[at:at] = [dict(m) for m in defaults.messages]
    return messages


def with_manifest(request: JsonObject, defaults: ModelDefaults, context: int | None) -> JsonObject:
    """An OpenAI chat-completions body (from any API but Ollama's, whose options
    :func:`chat_request` merges) with what the manifest entry adds: its messages
    (:func:`with_manifest_messages`), its parameters where the request sets none, and
    its ``num_predict`` (bounded by ``num_ctx`` and the context length) as
    ``max_tokens`` when the request sets no limit. A new dict."""
    result = dict(request)
    result["messages"] = with_manifest_messages(list(request.get("messages") or []), defaults)
    for field_name, value in options_to_fields(dict(defaults.parameters)).items():
        result.setdefault(field_name, value)
    if result.get("max_tokens") is None and result.get("max_completion_tokens") is None:
        limit = answer_limit(None, defaults.parameters, context)
        if limit is not None:
            result["max_tokens"] = limit
    return result


def with_template_roles(request: JsonObject, template: str | None) -> JsonObject:
    """A chat body whose ``developer`` turns (OpenAI's newer name for system ones, which
    Codex sends) are ``system`` turns, unless the model's chat template knows the role
    (gpt-oss's does): most templates skip a role they do not know, and the turn would
    be lost. A template not known here (an external server's) changes nothing."""
    messages = request.get("messages")
    if template is None or "developer" in template or not isinstance(messages, list):
        return request
    if not any(isinstance(m, dict) and m.get("role") == "developer" for m in messages):
        return request
    renamed = [
        {**m, "role": "system"} if isinstance(m, dict) and m.get("role") == "developer" else m
        for m in messages
    ]
    return {**request, "messages": renamed}


def generate_request(
    body: Mapping[str, Any],
    defaults: ModelDefaults,
    served_model: str | None,
    context: int | None = None,
    fill: Callable[[str, str], tuple[str, list[str]]] | None = None,
) -> tuple[str, JsonObject]:
    """An Ollama ``/api/generate`` body as (OpenAI endpoint path, body).

    A templated prompt becomes a chat with one user turn (the model's own chat
    template applies); ``raw`` prompts go to ``/v1/completions`` untouched, and so
    does a prompt with a ``suffix``, framed by ``fill`` (``fim.fim_prompt`` for the
    model: the raw prompt and its stops; it raises for a model that cannot fill in
    the middle). What no engine here honours is refused, not dropped: ``context``
    (an earlier answer's token ids, which this gateway never returns).
    """
    prompt = body.get("prompt") or ""
    if not isinstance(prompt, str):
        raise RequestError("prompt must be a string")
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise RequestError("suffix must be a string")
    if suffix:
        if body.get("raw"):
            raise RequestError(
                "raw prompts carry their own fill-in-the-middle tokens: leave suffix out"
            )
        if fill is None:
            raise RequestError("suffix (fill in the middle) is not supported for this model")
        framed, stops = fill(prompt, suffix)
        request = _openai_body(body, defaults, (served_model, context), {"prompt": framed})
        request["stop"] = [*stops, *(request.get("stop") or [])]
        return "/v1/completions", request
    if body.get("context"):
        raise RequestError(
            "context (the token ids of an earlier answer) is not supported here: send the "
            "conversation so far to /api/chat as messages"
        )
    if body.get("raw"):
        if body.get("system") or body.get("template"):
            raise RequestError("raw mode does not support template or system")
        extra: JsonObject = {"prompt": prompt}
        return "/v1/completions", _openai_body(body, defaults, (served_model, context), extra)
    system = body.get("system") or defaults.system
    messages: list[JsonObject] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.extend(dict(m) for m in defaults.messages)
    user: JsonObject = {"role": "user", "content": prompt}
    if body.get("images"):
        user = _message({"role": "user", "content": prompt, "images": body["images"]})
    messages.append(user)
    return "/v1/chat/completions", _openai_body(
        body, defaults, (served_model, context), {"messages": messages}
    )


def _openai_body(
    body: Mapping[str, Any],
    defaults: ModelDefaults,
    model: tuple[str | None, int | None],  # the served model's name and context length
    payload: JsonObject,
) -> JsonObject:
    served_model, context = model
    request: JsonObject = {}
    if served_model is not None:
        request["model"] = served_model
    request.update(payload)
    options = body.get("options")
    if options is not None and not isinstance(options, dict):
        raise RequestError("options must be an object")
    request.update(options_to_fields(dict(defaults.parameters)))
    request.update(options_to_fields(options))
    limit = answer_limit(options, defaults.parameters, context)
    if limit is not None:
        request["max_tokens"] = limit
    stream = body.get("stream", True)
    if not isinstance(stream, bool):
        raise RequestError("stream must be true or false")
    request["stream"] = stream
    if stream:
        request["stream_options"] = {"include_usage": True}
    fmt = response_format(body.get("format"))
    if fmt is not None:
        request["response_format"] = fmt
    if body.get("tools"):
        request["tools"] = _list(body["tools"], "tools")
    return request


def _list(value: object, name: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise RequestError(f"{name} must be a list")
    return value


def _message(message: object) -> JsonObject:
    """One Ollama chat message as an OpenAI one (images become data-URL parts,
    tool-call arguments become JSON strings)."""
    if not isinstance(message, dict):
        raise RequestError("each message must be an object")
    role = str(message.get("role", "")).lower()
    if role not in ("system", "user", "assistant", "tool"):
        raise RequestError(f"invalid message role {message.get('role')!r}")
    content = message.get("content") or ""
    if not isinstance(content, str):
        raise RequestError("message content must be a string (images go in images)")
    out: JsonObject = {"role": role, "content": content}
    images = message.get("images")
    if images is not None and (
        not isinstance(images, list) or not all(isinstance(i, str) for i in images)
    ):
        raise RequestError("images must be a list of base64-encoded images")
    if images:
        parts: list[JsonObject] = [{"type": "text", "text": content}] if content else []
        parts += [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}}
            for image in images
        ]
        out["content"] = parts
    calls = message.get("tool_calls")
    if calls is not None and not _tool_calls(calls):
        raise RequestError(
            'tool_calls must be a list of {"function": {"name": ..., "arguments": {...}}}'
        )
    if calls:
        out["tool_calls"] = [
            {
                "id": call.get("id") or f"call_{index}",
                "type": "function",
                "function": {
                    "name": call["function"]["name"],
                    "arguments": _arguments_text(call["function"].get("arguments", {})),
                },
            }
            for index, call in enumerate(calls)
        ]
    if role == "tool":
        if message.get("tool_call_id"):
            out["tool_call_id"] = message["tool_call_id"]
        if message.get("tool_name"):
            out["name"] = message["tool_name"]
    return out


def _arguments_text(arguments: object) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def _tool_calls(calls: object) -> bool:
    """Is ``calls`` a list of Ollama tool calls (each a function with a name)?"""
    if not isinstance(calls, list):
        return False
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            return False
        if not isinstance(function.get("arguments", {}), dict | str):
            return False
    return True
