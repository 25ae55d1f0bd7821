"""Ollama's answers from a backend's OpenAI ones: pure shape translation for the gateway.

The backend's OpenAI chat stream becomes Ollama's NDJSON chunks (content,
``thinking``, tool calls) with Ollama's final statistics (nanoseconds,
``done_reason``), or, for ``stream: false``, one merged object. The requests go
the other way in ``ollama.py``. Wire facts follow ``shared/docs/ollama-api.md``.
Pure: no I/O, no clock reads (callers pass times in), no logging.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

JsonObject = dict[str, Any]

_FINISH_REASONS = {"stop": "stop", "length": "length", "tool_calls": "stop"}


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
