"""Ollama's API in OpenAI terms, and back: pure shape translation for the gateway.

The model servers speak OpenAI. The gateway turns an Ollama ``/api/chat`` or
``/api/generate`` body into the OpenAI request a backend takes (manifest
defaults under the request's own values, options mapped, format and tools
translated), and turns the backend's OpenAI stream back into Ollama's NDJSON
chunks with Ollama's final statistics (nanoseconds, ``done_reason``). Wire
facts follow ``shared/docs/ollama-api.md``. Pure: no I/O, no clock reads
(callers pass times in), no logging.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mlx_lama.gateway.http import is_int
from mlx_lama.schema.units import Duration

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
_FINISH_REASONS = {"stop": "stop", "length": "length", "tool_calls": "stop"}


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


def generate_request(
    body: Mapping[str, Any],
    defaults: ModelDefaults,
    served_model: str | None,
    context: int | None = None,
) -> tuple[str, JsonObject]:
    """An Ollama ``/api/generate`` body as (OpenAI endpoint path, body).

    A templated prompt becomes a chat with one user turn (the model's own chat
    template applies); ``raw`` prompts go to ``/v1/completions`` untouched. What no
    engine here honours is refused, not dropped: ``suffix`` (fill in the middle) and
    ``context`` (an earlier answer's token ids, which this gateway never returns).
    """
    prompt = body.get("prompt") or ""
    if not isinstance(prompt, str):
        raise RequestError("prompt must be a string")
    if body.get("suffix"):
        raise RequestError(
            "suffix (fill in the middle) is not supported: the engines here complete a "
            "prompt from its start only; send the model's own fill-in-the-middle prompt "
            "(its prefix, suffix and middle tokens around your text) with raw: true"
        )
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


def created_at(moment: datetime) -> str:
    """RFC 3339 in UTC with nanosecond digits, as Ollama writes ``created_at``."""
    # isoformat, not strftime: this runs for every streamed chunk, and strftime costs
    # several times as much. "YYYY-MM-DDTHH:MM:SS.ffffff" is its first 26 characters.
    utc = moment if moment.tzinfo is UTC else moment.astimezone(UTC)
    return utc.isoformat(timespec="microseconds")[:26] + "000Z"


class Thought(str):
    """Reasoning text (the engine's ``reasoning`` / ``reasoning_content``), which Ollama
    answers under ``thinking`` beside the content."""

    __slots__ = ()


@dataclass(slots=True)
class StreamTranslator:
    """Turns a backend's OpenAI chat stream into Ollama chat or generate chunks.

    Feed each decoded SSE event to :meth:`feed` and collect what it returns;
    call :meth:`finish` at the end for the final chunk with the statistics.
    Times are seconds from a monotonic clock, passed in by the caller.
    """

    model: str  # the name the client asked for, echoed back
    kind: str  # "chat" or "generate"
    started: float  # the request arrived
    loaded: float  # the backend was ready (after any on-demand start)
    first_token: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    _calls: dict[int, JsonObject] = field(default_factory=dict)
    # A text chunk's NDJSON line around its created_at and its text (see _chunk).
    _head: str = field(init=False, repr=False)
    _key: str = field(init=False, repr=False)
    _tail: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._head = '{"model":' + _string(self.model) + ',"created_at":"'
        if self.kind == "chat":
            self._key, self._tail = (
                '","message":{"role":"assistant","content":',
                '},"done":false}\n',
            )
        else:
            self._key, self._tail = '","response":', ',"done":false}\n'

    def feed(self, event: Mapping[str, Any], now: float, moment: datetime) -> list[JsonObject]:
        texts = self._texts(event, now)
        chunks = [self._chunk(text, moment) for text in texts]
        if self.finish_reason and self._calls:
            chunks.append(self._tool_chunk(moment))
        return chunks

    def feed_ndjson(self, event: Mapping[str, Any], now: float, moment: datetime) -> bytes:
        """What :meth:`feed` returns, as NDJSON lines (b"" for none): the bytes of
        :func:`ndjson_line` of each chunk, for less CPU per streamed token."""
        texts = self._texts(event, now)
        lines = b""
        if texts:
            stamp = created_at(moment)
            for text in texts:
                if type(text) is str:  # else as json.dumps would have it, whatever it is
                    lines += f"{self._head}{stamp}{self._key}{_string(text)}{self._tail}".encode()
                else:
                    lines += ndjson_line(self._chunk(text, moment))
        if self.finish_reason and self._calls:
            lines += ndjson_line(self._tool_chunk(moment))
        return lines

    def _texts(self, event: Mapping[str, Any], now: float) -> list[Any]:
        """Takes in the event's usage, tool-call pieces and finish reason; the texts
        of its choices, one chunk each."""
        usage = event.get("usage")
        if isinstance(usage, dict):
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)
        texts: list[Any] = []
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or choice.get("message") or {}
            # mlx_lm.server says "reasoning", DeepSeek-style servers "reasoning_content"
            thought = delta.get("reasoning") or delta.get("reasoning_content") or ""
            text = delta.get("content") or choice.get("text") or ""
            for call in delta.get("tool_calls") or []:
                self._collect(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            for piece in (Thought(thought) if thought else "", text):
                if piece:
                    if self.first_token is None:
                        self.first_token = now
                    texts.append(piece)
        return texts

    def finish(self, now: float, moment: datetime) -> JsonObject:
        """The final chunk: empty text, ``done``, ``done_reason`` and durations in ns."""
        final = self._chunk("", moment)
        final["done"] = True
        final["done_reason"] = _FINISH_REASONS.get(self.finish_reason or "stop", "stop")
        first = self.first_token if self.first_token is not None else now
        stats = {
            "total_duration": _ns(now - self.started),
            "load_duration": _ns(self.loaded - self.started),
            "prompt_eval_count": self.prompt_tokens,
            "prompt_eval_duration": _ns(first - self.loaded),
            "eval_count": self.completion_tokens,
            "eval_duration": _ns(now - first),
        }
        final.update({k: v for k, v in stats.items() if v})  # Ollama omits zero values
        return final

    def _chunk(self, text: str, moment: datetime) -> JsonObject:
        chunk: JsonObject = {"model": self.model, "created_at": created_at(moment)}
        thinking = isinstance(text, Thought)
        if self.kind == "chat":
            chunk["message"] = {"role": "assistant", "content": "" if thinking else text}
            if thinking:
                chunk["message"]["thinking"] = str(text)
        else:
            chunk["response"] = "" if thinking else text
            if thinking:
                chunk["thinking"] = str(text)
        chunk["done"] = False
        return chunk

    def _collect(self, call: Mapping[str, Any]) -> None:
        # Streamed tool calls arrive in pieces: the name once, the arguments in fragments.
        entry = self._calls.setdefault(int(call.get("index", 0)), {"name": "", "arguments": ""})
        function = call.get("function") or {}
        entry["name"] += function.get("name") or ""
        entry["arguments"] += function.get("arguments") or ""
        if call.get("id"):
            entry["id"] = call["id"]

    def _tool_chunk(self, moment: datetime) -> JsonObject:
        chunk = self._chunk("", moment)
        calls = []
        for index in sorted(self._calls):
            entry = self._calls[index]
            call: JsonObject = {
                "function": {
                    "index": index,
                    "name": entry["name"],
                    "arguments": _arguments(entry["arguments"]),
                }
            }
            if "id" in entry:
                call["id"] = entry["id"]
            calls.append(call)
        self._calls.clear()
        if self.kind == "chat":
            chunk["message"]["tool_calls"] = calls
        else:
            chunk["tool_calls"] = calls
        return chunk


def ndjson_line(chunk: Mapping[str, Any]) -> bytes:
    """One chunk as a line of Ollama's NDJSON stream (compact, UTF-8, not escaped)."""
    return json.dumps(chunk, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


# A str as json.dumps(ensure_ascii=False) writes it, without making an encoder per call.
_string = json.encoder.encode_basestring


def _arguments(text: str) -> object:
    """Tool-call arguments as Ollama sends them: a JSON object, not a string."""
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {"_raw": text}
    return value if isinstance(value, dict) else {"value": value}


def _ns(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


def merge_stream(chunks: Sequence[Mapping[str, Any]], kind: str) -> JsonObject:
    """``stream: false``: one object with the text of every chunk and the last one's metadata."""
    if not chunks:
        raise ValueError("no chunks to merge")
    merged = dict(chunks[-1])
    if kind == "chat":
        message: JsonObject = {"role": "assistant", "content": ""}
        thinking = "".join(c["message"].get("thinking", "") for c in chunks)
        if thinking:
            message["thinking"] = thinking
        for chunk in chunks:
            message["content"] += chunk["message"].get("content", "")
            if chunk["message"].get("tool_calls"):
                message["tool_calls"] = chunk["message"]["tool_calls"]
        merged["message"] = message
    else:
        merged["response"] = "".join(c.get("response", "") for c in chunks)
        thinking = "".join(c.get("thinking", "") for c in chunks)
        if thinking:
            merged["thinking"] = thinking
        calls = [c["tool_calls"] for c in chunks if c.get("tool_calls")]
        if calls:
            merged["tool_calls"] = calls[-1]
    return merged
