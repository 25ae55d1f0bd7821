"""OpenAI Responses answers from a backend's chat stream: pure shape translation.

:class:`ResponseStream` turns the chat-completions events into the Responses
events (``response.created``, ``response.in_progress``, then per output item
``response.output_item.added``, its deltas and ``.done`` events, and last
``response.completed``, ``response.incomplete`` or ``response.failed``
carrying the whole response), each with a growing ``sequence_number``. It keeps
the output items, so :meth:`ResponseStream.whole` is the answer of a request
without ``stream``. Reasoning comes as a ``reasoning`` item with its text, text
as a ``message`` item, each tool call as a ``function_call`` item. The requests
go the other way in ``responses.py``. Pure: times are passed in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mlx_lama.gateway.chat_deltas import JsonObject, Kind, Piece, ReadAnswer, new_id

# What the response object echoes of its request, and the value when not asked.
ECHOED: Mapping[str, Any] = {
    "instructions": None,
    "max_output_tokens": None,
    "metadata": {},
    "parallel_tool_calls": True,
    "reasoning": None,
    "temperature": None,
    "text": {"format": {"type": "text"}},
    "tool_choice": "auto",
    "tools": [],
    "top_p": None,
}


class ResponseStream(ReadAnswer):
    """One answer, as Responses events and as a whole response.

    :meth:`start` first, :meth:`feed` each backend event, :meth:`finish` at its end
    (or :meth:`fail` when the backend failed).
    """

    def __init__(self, model: str, request: Mapping[str, Any], created: float) -> None:
        super().__init__()
        self.model = model  # the name the client asked for, echoed back
        self.id = new_id("resp_")
        self.created_at = int(created)  # Unix seconds
        self.echo = {key: request.get(key, default) for key, default in ECHOED.items()}
        self.items: list[JsonObject] = []
        self._sequence = 0
        self._failure: str | None = None

    def start(self) -> bytes:
        head = self._response("in_progress")
        return self._event("response.created", response=head) + self._event(
            "response.in_progress", response=head
        )

    def finish(self) -> bytes:
        out = self._close()
        status = self.status
        return out + self._event(f"response.{status}", response=self._response(status))

    def fail(self, problem: str) -> bytes:
        self._failure = problem
        return self._event("response.failed", response=self._response("failed"))

    @property
    def status(self) -> str:
        return "incomplete" if self.reader.finish_reason == "length" else "completed"

    def whole(self) -> JsonObject:
        """The whole response, as ``POST /v1/responses`` without ``stream`` returns it."""
        return self._response(self.status)

    def _response(self, status: str) -> JsonObject:
        response: JsonObject = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "model": self.model,
            "output": [dict(item) for item in self.items] if status != "in_progress" else [],
            "error": None,
            "incomplete_details": None,
            "usage": None,
            "store": False,
            **self.echo,
        }
        if status == "incomplete":
            response["incomplete_details"] = {"reason": "max_output_tokens"}
        if status == "failed":
            response["error"] = {"code": "server_error", "message": self._failure or "failed"}
        if status in ("completed", "incomplete"):
            response["usage"] = {
                "input_tokens": self.prompt_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": self.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.prompt_tokens + self.completion_tokens,
            }
        return response

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()

    def _delta(self, piece: Piece) -> bytes:
        at = len(self.items) - 1
        item = self.items[at]
        where = {"item_id": item["id"], "output_index": at}
        if piece.kind == "thinking":
            item["content"][0]["text"] += piece.text
            return self._event(
                "response.reasoning_text.delta", **where, content_index=0, delta=piece.text
            )
        if piece.kind == "text":
            item["content"][0]["text"] += piece.text
            return self._event(
                "response.output_text.delta",
                **where,
                content_index=0,
                delta=piece.text,
                logprobs=[],
            )
        if not piece.text:
            return b""
        item["arguments"] += piece.text
        return self._event("response.function_call_arguments.delta", **where, delta=piece.text)

    def _begin(self, piece: Piece) -> bytes:
        at = len(self.items)
        if piece.kind == "thinking":
            item: JsonObject = {"type": "reasoning", "id": new_id("rs_"), "summary": []}
            self.items.append({**item, "content": [{"type": "reasoning_text", "text": ""}]})
            return self._event("response.output_item.added", output_index=at, item=item)
        if piece.kind == "text":
            item = {
                "type": "message",
                "id": new_id("msg_"),
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            part = {"type": "output_text", "text": "", "annotations": []}
            self.items.append({**item, "content": [dict(part)]})
            added = self._event("response.output_item.added", output_index=at, item=item)
            return added + self._event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=at,
                content_index=0,
                part=part,
            )
        item = {
            "type": "function_call",
            "id": new_id("fc_"),
            "call_id": piece.call_id,
            "name": piece.name,
            "arguments": "",
            "status": "in_progress",
        }
        self.items.append(dict(item))
        return self._event("response.output_item.added", output_index=at, item=item)

    def _end(self, kind: Kind) -> bytes:
        at = len(self.items) - 1
        item = self.items[at]
        where = {"item_id": item["id"], "output_index": at}
        out = b""
        if kind == "thinking":
            text = item["content"][0]["text"]
            out += self._event("response.reasoning_text.done", **where, content_index=0, text=text)
        elif kind == "text":
            part = item["content"][0]
            out += self._event(
                "response.output_text.done",
                **where,
                content_index=0,
                text=part["text"],
                logprobs=[],
            )
            out += self._event("response.content_part.done", **where, content_index=0, part=part)
            item["status"] = "completed"
        else:
            out += self._event(
                "response.function_call_arguments.done",
                **where,
                name=item["name"],
                arguments=item["arguments"],
            )
            item["status"] = "completed"
        return out + self._event("response.output_item.done", output_index=at, item=item)
