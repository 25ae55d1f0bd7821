"""A backend's OpenAI chat stream, read as the pieces other APIs answer in.

The Anthropic and Responses translations (``anthropic_answers.py``,
``responses_answers.py``) both need the same reading of each chat-completions
event: its reasoning, text and tool-call pieces in order, its usage and its
finish reason. :class:`ChatReader` does that reading once for both, and keeps
what a request is counted with (tokens, time to first token). Pure: times are
passed in.
"""

from __future__ import annotations

import json
import secrets
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

JsonObject = dict[str, Any]
Kind = Literal["thinking", "text", "call"]


def new_id(prefix: str) -> str:
    """A fresh id in the style of the API that answers (``msg_``, ``resp_``, ``call_``...)."""
    return prefix + secrets.token_hex(12)


@dataclass(slots=True)
class Piece:
    """One piece of an answer: reasoning or text, or part of a tool call (its
    ``index`` among the answer's calls; ``call_id`` and ``name`` on its first piece,
    ``text`` a piece of its JSON arguments)."""

    kind: Kind
    text: str = ""
    index: int = 0
    call_id: str | None = None
    name: str | None = None


@dataclass(slots=True)
class ChatReader:
    """Reads a chat-completions stream's events (``pieces``), keeping its usage, its
    finish reason and when the first token came."""

    first_token: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    _calls_seen: set[int] = field(default_factory=set)

    def pieces(self, event: Mapping[str, Any], now: float) -> list[Piece]:
        usage = event.get("usage")
        if isinstance(usage, dict):
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)
        found: list[Piece] = []
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or choice.get("message") or {}
            # mlx_lm.server says "reasoning", DeepSeek-style servers "reasoning_content"
            thought = delta.get("reasoning") or delta.get("reasoning_content")
            if thought:
                found.append(Piece("thinking", str(thought)))
            text = delta.get("content")
            if text:
                found.append(Piece("text", str(text)))
            for call in delta.get("tool_calls") or []:
                found.append(self._call_piece(call))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        if found and self.first_token is None:
            self.first_token = now
        return found

    def _call_piece(self, call: Mapping[str, Any]) -> Piece:
        index = call.get("index")
        if not isinstance(index, int):
            index = len(self._calls_seen)
        function = call.get("function") or {}
        arguments = function.get("arguments")
        if isinstance(arguments, dict):  # some servers send the object, not its text
            arguments = json.dumps(arguments, ensure_ascii=False)
        first = index not in self._calls_seen
        self._calls_seen.add(index)
        return Piece(
            "call",
            str(arguments or ""),
            index,
            (call.get("id") or new_id("call_")) if first else None,
            (function.get("name") or "") if first else None,
        )

    @property
    def called_tools(self) -> bool:
        return bool(self._calls_seen)


class ReadAnswer(ABC):
    """The base of an answer translated from a chat stream into another API's events:
    the reader of that stream, what the request is counted with (``relay.Counted``),
    and the one rule both APIs share: the answer is a run of blocks (items), one per
    kind of piece, a new one each time the kind (or the tool call) changes.
    Subclasses say how a block begins (:meth:`_begin`), grows (:meth:`_delta`) and
    ends (:meth:`_end`)."""

    def __init__(self) -> None:
        self.reader = ChatReader()
        self._open: tuple[Kind, int] | None = None  # the open block's kind and call index

    @property
    def first_token(self) -> float | None:
        return self.reader.first_token

    @property
    def prompt_tokens(self) -> int:
        return self.reader.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self.reader.completion_tokens

    def feed(self, event: Mapping[str, Any], now: float) -> bytes:
        """The events for one backend event."""
        out = b""
        for piece in self.reader.pieces(event, now):
            if self._open != (piece.kind, piece.index):
                out += self._close()
                self._open = (piece.kind, piece.index)
                out += self._begin(piece)
            out += self._delta(piece)
        return out

    def _close(self) -> bytes:
        """The events that end the open block, if one is."""
        if self._open is None:
            return b""
        kind, _ = self._open
        self._open = None
        return self._end(kind)

    @abstractmethod
    def _begin(self, piece: Piece) -> bytes: ...

    @abstractmethod
    def _delta(self, piece: Piece) -> bytes: ...

    @abstractmethod
    def _end(self, kind: Kind) -> bytes: ...


def arguments_object(text: str) -> JsonObject:
    """A tool call's arguments text as the object Anthropic's ``input`` is: {} for none.
    Engines send arguments they parsed themselves, so text that is no JSON object
    is kept whole under ``"arguments"`` rather than lost."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"arguments": text}
    return value if isinstance(value, dict) else {"arguments": value}
