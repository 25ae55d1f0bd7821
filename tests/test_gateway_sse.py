"""``gateway/sse.py``: parsing a backend's SSE stream and relaying it with ``model``
rewritten. The byte readers are checked against the line readers on odd streams
read in every way (one read, per event, per line, per byte, at random)."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mlx_lama.gateway.proxy import MAX_LINE, UpstreamError
from mlx_lama.gateway.sse import SseEvents, SseRelay, _json, add_reasoning_content, sse_events


def _relay(lines: list[str], name: str = "my:model") -> tuple[SseRelay, list[bytes]]:
    relay = SseRelay(name)
    out = [event for i, line in enumerate(lines) if (event := relay.feed(line, float(i)))]
    rest = relay.flush()
    return relay, [*out, *([rest] if rest else [])]


def test_relay_rewrites_model_per_event_and_keeps_framing() -> None:
    first = {"model": "default_model", "choices": [{"delta": {"role": "assistant", "content": ""}}]}
    second = {
        "model": "default_model",
        "choices": [{"delta": {"content": 'say "model": "x"'}}],
    }
    lines = [": keepalive 1/3", "", f"data: {json.dumps(first)}", "", f"data: {json.dumps(second)}"]
    lines += ["", "data: [DONE]", ""]
    relay, events = _relay(lines)
    assert events[0] == b": keepalive 1/3\n\n"
    decoded = [json.loads(e.decode()[6:]) for e in events[1:3]]
    assert [d["model"] for d in decoded] == ["my:model", "my:model"]
    assert decoded[1]["choices"][0]["delta"]["content"] == 'say "model": "x"'  # untouched
    assert events[3] == b"data: [DONE]\n\n"
    assert relay.done is True
    assert relay.first_content == 4.0  # the first event with non-empty content


def test_relay_notes_usage_and_a_missing_done() -> None:
    final = {"model": "m", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7}}
    relay, events = _relay([f"data: {json.dumps(final)}"])  # no blank line, no [DONE]
    assert relay.usage == {"prompt_tokens": 5, "completion_tokens": 7}
    assert relay.done is False
    assert json.loads(events[0].decode()[6:])["model"] == "my:model"


def test_relay_escapes_the_client_name_as_json() -> None:
    _relay_obj, events = _relay(['data: {"model": "m", "choices": []}', ""], name='we"ird')
    assert json.loads(events[0].decode()[6:])["model"] == 'we"ird'


# -- the byte paths of the token streams, against the line paths they replace

_EVENT = (
    '{"id": "c-1", "object": "chat.completion.chunk", "model": "default_model", '
    '"created": 1, "choices": [{"index": 0, "finish_reason": null, "delta": %s}]}'
)
_USAGE = (
    '{"model": "default_model", "choices": [], '
    '"usage": {"prompt_tokens": 5, "completion_tokens": 3}}'
)
_DELTAS = (
    {"role": "assistant"},
    {"role": "assistant", "content": ""},
    {"role": "assistant", "content": "Hi"},
    {"role": "assistant", "content": ' "model": "x" '},
    {"role": "assistant", "content": "\u00fc\u2028\U0001f600"},
)
_A = 'data: {"model": "a", "choices": [{"delta": {"content": "x"}}]}'


def _sse(*lines: str) -> bytes:
    return "".join(lines).encode()


STREAMS = {
    "mlx-lm": _sse(
        ": keepalive 1/1\n\n",
        *(f"data: {_EVENT % json.dumps(delta)}\n\n" for delta in _DELTAS),
        f"data: {_USAGE}\n\ndata: [DONE]\n\n",
    ),
    "unicode unescaped": _sse(
        'data: {"model": "m\u00fc", "choices": [{"delta": {"content": "\u00e9"}}]}\n\n',
        'data: {"model": "m\u00fc", "choices": [{"delta": {"content": "\u4e2d"}}]}\n\n',
        "data: [DONE]\n\n",
    ),
    "escaped quotes in model": _sse(
        'data: {"model": "a\\"b\\\\", "choices": [{"delta": {"content": "x"}}]}\n\n',
        'data: {"model": "a\\"b\\\\", "choices": [{"delta": {"content": "y"}}]}\n\n',
    ),
    "model absent": _sse(
        'data: {"choices": [{"delta": {"content": "x"}}]}\n\n',
        'data: {"choices": [{"delta": {"content": "y"}}]}\n\ndata: [DONE]\n\n',
    ),
    "model changes": _sse(
        f"{_A}\n\n",
        'data: {"model" : "b", "choices": []}\n\ndata: {"model":"a","choices":[]}\n\n',
    ),
    "model key in a string first": _sse(
        f"{_A}\n\n",
        'data: {"note": "\\"model\\": \\"a\\"", "model": "a"}\n\n',
    ),
    "nested model first": _sse(f"{_A}\n\n", 'data: {"meta": {"model": "a"}, "model": "b"}\n\n'),
    "crlf": _sse(f"{_A}\r\n\r\n", f"{_A}\r\n\r\n"),
    "cr before the blank line": _sse(f"{_A}\n\n", f"{_A}\r\n\n"),
    "multi-line events": _sse(f"event: delta\n{_A}\nid: 1\n\n", f"{_A}\n{_A}\n\n", f"{_A}\n\n"),
    "extra blank lines": _sse(f"\n\n{_A}\n\n\n\n", f"{_A}\n\n\n"),
    "invalid utf-8": _sse(f"{_A}\n\n") + b'data: {"model": "a", "c": "\xff"}\n\n',
    "no end": _sse(f"{_A}\n\n{_A}"),
    "usage spaced": _sse(
        f"{_A}\n\n",
        'data: {"model": "a", "usage" :\t{"prompt_tokens": 1}, "choices": []}\n\n',
    ),
    "done spaced": _sse(f"{_A}\n\n", "data:   [DONE]  \n\n"),
    "vllm-mlx, usage null until the last": _sse(
        *(
            f'data: {{"id":"c","model":"a","choices":[{{"delta":{{"content":"{t}"}}}}],'
            f'"usage":null,"generation_metadata":null}}\n\n'
            for t in ("x", "y", "z")
        ),
        'data: {"id":"c","model":"a","choices":[],"usage":{"prompt_tokens":5,'
        '"completion_tokens":3,"total_tokens":8}}\n\ndata: [DONE]\n\n',
    ),
}


def _chunkings(raw: bytes) -> list[list[bytes]]:
    """The body as one read, a read per event, per line (a blank line with the line
    before it), per byte, and at random."""
    per_event = [piece + b"\n\n" for piece in raw.split(b"\n\n")]
    per_event[-1] = per_event[-1][:-2]
    per_line = re.findall(rb"[^\n]*\n\n?|[^\n]+$", raw)
    rng = random.Random(7)
    cuts = sorted(rng.sample(range(1, len(raw)), min(12, len(raw) - 1)))
    randomly = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    per_byte = [raw[i : i + 1] for i in range(len(raw))]
    return [[raw], [p for p in per_event if p], per_line, per_byte, randomly]


def _by_lines(raw: bytes, name: str) -> tuple[SseRelay, bytes]:
    """What the relay made of ``raw`` through ``RawStream.aiter_lines`` and ``feed``."""
    relay = SseRelay(name)
    *lines, last = raw.split(b"\n")
    if last:
        lines.append(last)
    out = [relay.feed(line.rstrip(b"\r").decode("utf-8", "replace"), 1.0) for line in lines]
    return relay, b"".join(e for e in [*out, relay.flush()] if e)


@pytest.mark.parametrize("stream", sorted(STREAMS))
@pytest.mark.parametrize("name", ["my:model", 'we"ird\\', "mod\u00e8le"])
def test_relay_feed_bytes_is_feed_by_lines_however_the_reads_fall(stream: str, name: str) -> None:
    raw = STREAMS[stream]
    expected_relay, expected = _by_lines(raw, name)
    for reads in _chunkings(raw):
        relay = SseRelay(name)
        out = b"".join(relay.feed_bytes(data, 1.0) for data in reads)
        out += relay.end(1.0) or b""
        assert out == expected
        assert (relay.done, relay.first_content, relay.usage) == (
            expected_relay.done,
            expected_relay.first_content,
            expected_relay.usage,
        )


def test_relay_feed_bytes_rewrites_the_usual_event_without_decoding_it() -> None:
    relay = SseRelay("my:model")
    first = b'data: {"model": "default_model", "choices": [{"delta": {"content": "a"}}]}\n\n'
    assert relay.feed_bytes(first, 1.0).startswith(b'data: {"model":"my:model", "choices"')
    assert relay.first_content == 1.0
    later = b'data: {"id": 2, "model": "default_model", "choices": []}\n\n'
    relay.feed = None  # type: ignore[assignment,method-assign]  # the line path would fail
    assert relay.feed_bytes(later, 2.0) == b'data: {"id": 2, "model":"my:model", "choices": []}\n\n'
    null = b'data: {"model": "default_model", "choices": [], "usage": null}\n\n'  # vllm-mlx
    rewritten = b'data: {"model":"my:model", "choices": [], "usage": null}\n\n'
    assert relay.feed_bytes(null, 3.0) == rewritten


def test_relay_feed_bytes_refuses_an_endless_line() -> None:
    relay = SseRelay("m")
    assert relay.feed_bytes(b"data: " + b"x" * 1000, 1.0) == b""
    with pytest.raises(UpstreamError, match="oversized"):
        relay.feed_bytes(b"x" * MAX_LINE, 1.0)


class _Lines:
    """A response whose ``aiter_lines`` gives ``RawStream``'s lines of ``raw``."""

    def __init__(self, raw: bytes) -> None:
        *self.lines, last = raw.split(b"\n")
        if last:
            self.lines.append(last)

    async def aiter_lines(self) -> AsyncIterator[str]:
        for line in self.lines:
            yield line.rstrip(b"\r").decode("utf-8", "replace")


def _events_by_lines(raw: bytes) -> tuple[list[dict[str, Any]], str | None]:
    async def collect() -> tuple[list[dict[str, Any]], str | None]:
        events: list[dict[str, Any]] = []
        try:
            async for event in sse_events(_Lines(raw)):  # type: ignore[arg-type]
                events.append(event)
        except UpstreamError as error:
            return events, str(error)
        return events, None

    return asyncio.run(collect())


EVENT_STREAMS = {
    **{name: STREAMS[name] for name in ("mlx-lm", "unicode unescaped", "crlf", "invalid utf-8")},
    "multi-line": b'event: x\ndata: {"a": 1}\n\n: note\ndata: {"b": 2}\n\ndata: [DONE]\n\n',
    "error event": b'data: {"choices": []}\n\ndata: {"error": {"message": "boom"}}\n\n'
    b"data: [DONE]\n\n",
    "error with choices": b'data: {"error": "x", "choices": []}\n\ndata: [DONE]\n\n',
    "not json": b'data: {"choices": []}\n\ndata: {oops\n\ndata: [DONE]\n\n',
    "not an object": b"data: [1, 2]\n\ndata: 3\n\ndata: [DONE]\n\n",
    "no done": b'data: {"choices": []}\n\ndata: {"choices": []}',
    "after done": b'data: {"a": 1}\n\ndata: [DONE]\n\ndata: {"b": 2}\n\n',
    "invalid utf-8 again": b'data: {"a": "\xff"}\n\ndata: [DONE]\n\n',
    "done without line end": b'data: {"a": 1}\n\ndata: [DONE]',
}


@pytest.mark.parametrize("stream", sorted(EVENT_STREAMS))
def test_sse_events_from_bytes_are_sse_events_by_lines(stream: str) -> None:
    raw = EVENT_STREAMS[stream]
    expected = _events_by_lines(raw)
    for reads in _chunkings(raw):
        parser = SseEvents()
        events: list[dict[str, Any]] = []
        for data in reads:
            events += parser.feed(data)
            if parser.done or parser.failure:
                break
        else:
            events += parser.end()
        failure = None if parser.failure is None else str(parser.failure)
        assert (events, failure) == expected
        assert parser.done is (failure is None)


def test_sse_events_from_bytes_refuse_an_endless_line() -> None:
    parser = SseEvents()
    assert parser.feed(b"data: " + b"x" * MAX_LINE) == []
    assert str(parser.failure) == "model server sent an oversized event"


@pytest.mark.parametrize(
    "text",
    [
        '{"a": [1, 2.5, -3e2, true, false, null], "b": {"c": "\\u00fc\\"\\\\"}}',
        '"a string"',
        "42",
        "NaN",
        "[]",
        "",
        "{",
        '{"a": 1} {"b": 2}',
        '{"a": 1}x',
        "\ufeff{}",
        "{'a': 1}",
        '{"a": 1,}',
        "nul",
    ],
)
def test_json_of_a_stripped_payload_is_json_loads(text: str) -> None:
    try:
        expected: Any = ("ok", json.loads(text))
    except ValueError:
        expected = ("ValueError",)
    try:
        got: Any = ("ok", _json(text))
    except ValueError:
        got = ("ValueError",)
    assert repr(got) == repr(expected)  # repr: NaN is not equal to itself


def test_reasoning_is_also_sent_as_reasoning_content() -> None:
    """mlx_lm.server names the reasoning ``reasoning``; OpenAI clients read
    ``reasoning_content``: the relay sends both, by lines and by bytes alike."""
    thought = {
        "model": "served",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "", "reasoning": "Hm"}}],
    }
    answer = {"model": "served", "choices": [{"index": 0, "delta": {"content": "Yes"}}]}
    raw = f"data: {json.dumps(thought)}\n\ndata: {json.dumps(answer)}\n\ndata: [DONE]\n\n".encode()
    _relay_by_lines, by_lines = _by_lines(raw, "m")
    relay = SseRelay("m")
    relay.feed_bytes(f"data: {json.dumps(answer)}\n\n".encode(), 0.0)  # the fast path is armed
    by_bytes = b"".join(SseRelay("m").feed_bytes(part, 1.0) for part in [raw])
    assert by_bytes == by_lines
    first = json.loads(by_lines.split(b"\n\n")[0][6:])
    assert first["model"] == "m"
    assert first["choices"][0]["delta"] == {
        "role": "assistant", "content": "", "reasoning": "Hm", "reasoning_content": "Hm",
    }  # fmt: skip
    after = relay.feed_bytes(f"data: {json.dumps(thought)}\n\n".encode(), 2.0)
    assert json.loads(after[6:])["choices"][0]["delta"]["reasoning_content"] == "Hm"
    second = json.loads(by_lines.split(b"\n\n")[1][6:])
    assert "reasoning_content" not in second["choices"][0]["delta"]


def test_a_whole_answer_gets_reasoning_content_too() -> None:
    answer = {"choices": [{"message": {"role": "assistant", "content": "Y", "reasoning": "Hm"}}]}
    assert add_reasoning_content(answer) is True
    assert answer["choices"][0]["message"]["reasoning_content"] == "Hm"
    assert add_reasoning_content({"choices": [{"message": {"content": "Y"}}]}) is False
