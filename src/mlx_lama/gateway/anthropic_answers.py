"""Anthropic's Messages answers from a backend's OpenAI chat stream: pure shape translation.

:class:`MessageStream` turns the chat-completions events into Anthropic's
server-sent events (``message_start``, then per content block
``content_block_start`` / ``_delta`` / ``_stop`` for thinking, text and tool
use, then ``message_delta`` with the stop reason and usage, ``message_stop``),
and keeps the blocks, so that :meth:`MessageStream.whole` is the whole answer
of a request without ``stream``. The requests go the other way in
``anthropic.py``. Pure: no I/O, no clock reads (callers pass times in).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mlx_lama.gateway.chat_deltas import (
    JsonObject,
    Kind,
    Piece,
    ReadAnswer,
    arguments_object,
    new_id,
)
from mlx_lama.gateway.security import anthropic_error

_STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use"}


def sse(name: str, data: Mapping[str, Any]) -> bytes:
    """One server-sent event in Anthropic's framing: its name, then its data."""
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class MessageStream(ReadAnswer):
    """One answer, as Anthropic's events and as a whole message.

    :meth:`start` first, :meth:`feed` each backend event, :meth:`finish` at its end
    (or :meth:`fail` when the backend failed). Times are seconds from a monotonic
    clock, passed in.
    """

    def __init__(self, model: str) -> None:
        super().__init__()
        self.model = model  # the name the client asked for, echoed back
        self.id = new_id("msg_")
        self.blocks: list[JsonObject] = []  # the content so far; tool input as its text

    def start(self) -> bytes:
        message = self._message_head()
        message["usage"] = {"input_tokens": 0, "output_tokens": 0}
        return sse("message_start", {"type": "message_start", "message": message}) + sse(
            "ping", {"type": "ping"}
        )

    def finish(self) -> bytes:
        out = self._close()
        delta = {"stop_reason": self.stop_reason, "stop_sequence": None}
        usage = {"input_tokens": self.prompt_tokens, "output_tokens": self.completion_tokens}
        out += sse("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
        return out + sse("message_stop", {"type": "message_stop"})

    def fail(self, problem: str) -> bytes:
        return sse("error", anthropic_error(500, problem))

    @property
    def stop_reason(self) -> str:
        if self.reader.called_tools:
            return "tool_use"
        return _STOP_REASONS.get(self.reader.finish_reason or "", "end_turn")

    def whole(self) -> JsonObject:
        """The whole answer, as ``POST /v1/messages`` without ``stream`` returns it."""
        content: list[JsonObject] = []
        for block in self.blocks:
            if block["type"] == "tool_use":
                content.append({**block, "input": arguments_object(block["input"])})
            else:
                content.append(block)
        message = self._message_head()
        message.update(content=content, stop_reason=self.stop_reason)
        message["usage"] = {
            "input_tokens": self.prompt_tokens,
            "output_tokens": self.completion_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        return message

    def _message_head(self) -> JsonObject:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
        }

    def _delta(self, piece: Piece) -> bytes:
        index = len(self.blocks) - 1
        block = self.blocks[index]
        if piece.kind == "thinking":
            block["thinking"] += piece.text
            delta = {"type": "thinking_delta", "thinking": piece.text}
        elif piece.kind == "text":
            block["text"] += piece.text
            delta = {"type": "text_delta", "text": piece.text}
        else:
            if not piece.text:
                return b""
            block["input"] += piece.text
            delta = {"type": "input_json_delta", "partial_json": piece.text}
        event = {"type": "content_block_delta", "index": index, "delta": delta}
        return sse("content_block_delta", event)

    def _begin(self, piece: Piece) -> bytes:
        if piece.kind == "thinking":
            block: JsonObject = {"type": "thinking", "thinking": "", "signature": ""}
        elif piece.kind == "text":
            block = {"type": "text", "text": ""}
        else:
            block = {"type": "tool_use", "id": piece.call_id, "name": piece.name, "input": ""}
        self.blocks.append(block)
        shown = {**block, "input": {}} if piece.kind == "call" else dict(block)
        event = {"type": "content_block_start", "index": len(self.blocks) - 1}
        return sse("content_block_start", {**event, "content_block": shown})

    def _end(self, kind: Kind) -> bytes:
        index = len(self.blocks) - 1
        out = b""
        if kind == "thinking":  # no signature: nothing here signs its thinking
            delta = {"type": "signature_delta", "signature": ""}
            out += sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        return out + sse("content_block_stop", {"type": "content_block_stop", "index": index})
