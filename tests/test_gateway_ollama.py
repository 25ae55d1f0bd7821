"""Ollama <-> OpenAI translation: literal requests and streams in, Ollama wire shapes out."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlx_lama.gateway.ollama import (
    ModelDefaults,
    RequestError,
    answer_limit,
    chat_request,
    generate_request,
    options_to_fields,
    parse_keep_alive,
    response_format,
    with_template_roles,
)
from mlx_lama.gateway.ollama_answers import (
    StreamTranslator,
    created_at,
    merge_stream,
    ndjson_line,
)
from tests.fixtures.servers import free_port, mlx_lm_server_argv, running_server

MOMENT = datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=UTC)
NONE = ModelDefaults()


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, None), ("5m", 300.0), (300, 300.0), (0, 0.0), ("0", 0.0), (-1, math.inf)],
)
def test_keep_alive_follows_ollama(value: object, seconds: float | None) -> None:
    parsed = parse_keep_alive(value)
    assert (parsed.seconds if parsed else None) == seconds


@pytest.mark.parametrize("value", ["300", "soon", True, [1]])
def test_keep_alive_refuses_what_ollama_refuses(value: object) -> None:
    with pytest.raises(RequestError, match="invalid keep_alive"):
        parse_keep_alive(value)


def test_options_map_to_openai_fields_and_unknown_ones_are_ignored() -> None:
    fields = options_to_fields(
        {
            "temperature": 0.2, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "num_predict": 64,
            "stop": "END", "seed": 7, "repeat_penalty": 1.1, "presence_penalty": 0.5,
            "frequency_penalty": 0.25, "num_gpu": 99, "mirostat": 2, "num_ctx": 4096,
        }
    )  # fmt: skip
    assert fields == {
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "stop": ["END"],
        "seed": 7,
        "repetition_penalty": 1.1,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
    }  # fmt: skip  (num_predict and num_ctx are answer_limit's)
    assert options_to_fields(None) == {}


@pytest.mark.parametrize(
    ("options", "parameters", "context", "limit"),
    [
        ({}, {}, 2048, None),  # the engine's default
        ({"num_predict": 64}, {}, 2048, 64),
        ({"num_predict": 64}, {}, None, 64),
        ({"num_predict": 5000}, {}, 2048, 2048),  # stops where the context is full
        ({"num_predict": -1}, {}, 2048, 2048),
        ({"num_predict": -2}, {}, 2048, 2048),
        ({"num_predict": -1}, {}, None, 1_000_000),
        ({"num_predict": -1, "num_ctx": 512}, {}, 2048, 512),
        ({"num_predict": 900, "num_ctx": 512}, {}, 2048, 512),
        ({"num_ctx": 512}, {}, 2048, None),
        ({}, {"num_predict": 100}, 2048, 100),
        ({}, {"num_predict": -1, "num_ctx": 4096}, 2048, 2048),  # the manifest's is capped
        ({"num_predict": 7}, {"num_predict": 100}, 2048, 7),
    ],
)
def test_num_predict_and_num_ctx_become_max_tokens(
    options: dict[str, object],
    parameters: dict[str, object],
    context: int | None,
    limit: int | None,
) -> None:
    assert answer_limit(options, parameters, context) == limit


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"num_predict": -5}, "invalid num_predict -5"),
        ({"num_predict": 0}, "invalid num_predict 0"),
        ({"num_predict": "10"}, 'invalid num_predict "10"'),
        ({"num_predict": 1.5}, "invalid num_predict 1.5"),
        ({"num_predict": True}, "invalid num_predict true"),
        ({"num_ctx": 0}, "invalid num_ctx 0"),
        ({"num_ctx": -1}, "invalid num_ctx -1"),
        ({"num_ctx": 2**40}, "more than the model's context length of 2048"),
        ({"num_ctx": "4k"}, 'invalid num_ctx "4k"'),
    ],
)
def test_num_predict_and_num_ctx_ollama_does_not_define_are_refused(
    options: dict[str, object], problem: str
) -> None:
    with pytest.raises(RequestError, match=re.escape(problem)):
        answer_limit(options, {}, 2048)


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        ({"role": "user", "content": {"a": 1}}, "content must be a string"),
        ({"role": "user", "content": "hi", "images": "abc"}, "images must be a list"),
        ({"role": "user", "content": "hi", "images": [1]}, "images must be a list"),
        ({"role": "assistant", "content": "", "tool_calls": [{"x": 1}]}, "tool_calls must be"),
        ({"role": "assistant", "content": "", "tool_calls": "f"}, "tool_calls must be"),
    ],
)
def test_chat_messages_of_a_wrong_shape_are_refused(
    message: dict[str, object], problem: str
) -> None:
    with pytest.raises(RequestError, match=problem):
        chat_request({"messages": [message]}, ModelDefaults(), None)


def test_format_becomes_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert response_format("json") == {"type": "json_object"}
    assert response_format(schema) == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema},
    }
    assert response_format(None) is None and response_format("") is None
    with pytest.raises(RequestError, match="invalid format"):
        response_format("yaml")


def test_chat_applies_manifest_defaults_under_the_request() -> None:
    defaults = ModelDefaults(
        system="Be brief.",
        messages=({"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"}),
        parameters={"temperature": 0.1, "num_predict": 100},
    )
    body = {
        "model": "coder",
        "messages": [{"role": "USER", "content": "hi"}],
        "options": {"temperature": 0.7, "unknown": 1},
    }
    assert chat_request(body, defaults, "served") == {
        "model": "served",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "ping"},
            {"role": "assistant", "content": "pong"},
            {"role": "user", "content": "hi"},
        ],
        "temperature": 0.7,
        "max_tokens": 100,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_a_request_system_message_replaces_the_manifest_one() -> None:
    body = {
        "messages": [{"role": "system", "content": "Mine."}, {"role": "user", "content": "hi"}],
        "stream": False,
    }
    request = chat_request(body, ModelDefaults(system="Theirs."), None)
    assert request == {
        "messages": [{"role": "system", "content": "Mine."}, {"role": "user", "content": "hi"}],
        "stream": False,
    }


def test_chat_translates_images_tools_and_tool_results() -> None:
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    body = {
        "messages": [
            {"role": "user", "content": "what is this", "images": ["QUJD"]},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "add", "arguments": {"a": 1, "b": 2}}}],
            },
            {"role": "tool", "content": "3", "tool_name": "add", "tool_call_id": "call_0"},
        ],
        "tools": tools,
        "format": "json",
        "stream": False,
    }
    request = chat_request(body, NONE, None)
    user, assistant, tool = request["messages"]
    assert user["content"] == [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}},
    ]
    assert assistant["tool_calls"] == [
        {
            "id": "call_0",
            "type": "function",
            "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'},
        }
    ]
    assert tool == {"role": "tool", "content": "3", "tool_call_id": "call_0", "name": "add"}
    assert request["tools"] == tools
    assert request["response_format"] == {"type": "json_object"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": "hi"}, "messages must be a list"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "invalid message role 'robot'"),
        ({"messages": [], "stream": "yes"}, "stream must be true or false"),
        ({"messages": [], "options": [1]}, "options must be an object"),
    ],
)
def test_bad_chat_bodies_are_refused(body: dict[str, Any], message: str) -> None:
    with pytest.raises(RequestError, match=message):
        chat_request(body, NONE, None)


def test_generate_uses_the_chat_template_unless_raw() -> None:
    path, request = generate_request(
        {"prompt": "Why?", "system": "Answer.", "stream": False}, ModelDefaults(system="x"), None
    )
    assert path == "/v1/chat/completions"
    assert request["messages"] == [
        {"role": "system", "content": "Answer."},
        {"role": "user", "content": "Why?"},
    ]
    path, request = generate_request({"prompt": "a b", "raw": True}, NONE, "m")
    assert path == "/v1/completions"
    assert (request["model"], request["prompt"]) == ("m", "a b")
    with pytest.raises(RequestError, match="raw mode does not support"):
        generate_request({"prompt": "a", "raw": True, "system": "s"}, NONE, None)
    # Refused, not dropped: no engine here takes token context.
    for raw in (False, True):
        with pytest.raises(RequestError, match=r"context .* /api/chat as messages"):
            generate_request({"prompt": "a", "context": [1, 2], "raw": raw}, NONE, "m")

    # A suffix is framed by the model's filler, as a raw completion with its stops.
    def fill(prefix: str, suffix: str) -> tuple[str, list[str]]:
        return f"<P>{prefix}<S>{suffix}<M>", ["<P>", "<S>", "<M>"]

    body = {"prompt": "def f(", "suffix": "\n", "options": {"stop": ["\n\n"]}, "system": "x"}
    path, request = generate_request(body, NONE, "m", None, fill)
    assert path == "/v1/completions"
    assert request["prompt"] == "<P>def f(<S>\n<M>"
    assert request["stop"] == ["<P>", "<S>", "<M>", "\n\n"]
    with pytest.raises(RequestError, match="not supported for this model"):
        generate_request({"prompt": "a", "suffix": "z"}, NONE, "m")
    with pytest.raises(RequestError, match="raw prompts carry their own"):
        generate_request({"prompt": "a", "suffix": "z", "raw": True}, NONE, "m", None, fill)
    assert generate_request({"prompt": "a", "context": [], "suffix": ""}, NONE, "m")[1]
    with pytest.raises(RequestError, match="prompt must be a string"):
        generate_request({"prompt": 3}, NONE, None)


def test_created_at_has_nanosecond_digits_in_utc() -> None:
    assert created_at(MOMENT) == "2026-11-24T12:00:00.123456000Z"


def sse(content: str | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    delta = {"content": content} if content is not None else {}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


def test_a_chat_stream_becomes_ollama_chunks_with_final_stats() -> None:
    stream = StreamTranslator(model="coder:latest", kind="chat", started=10.0, loaded=10.5)
    out: list[dict[str, Any]] = []
    out += stream.feed(sse(""), 10.6, MOMENT)  # role-only first event: nothing to say
    out += stream.feed(sse("Hello"), 10.75, MOMENT)
    out += stream.feed(sse(" there"), 10.85, MOMENT)
    out += stream.feed(sse(finish="length"), 10.9, MOMENT)
    out += stream.feed(
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}, 10.9, MOMENT
    )
    final = stream.finish(11.0, MOMENT)
    assert out == [
        {"model": "coder:latest", "created_at": "2026-11-24T12:00:00.123456000Z",
         "message": {"role": "assistant", "content": "Hello"}, "done": False},
        {"model": "coder:latest", "created_at": "2026-11-24T12:00:00.123456000Z",
         "message": {"role": "assistant", "content": " there"}, "done": False},
    ]  # fmt: skip
    assert final == {
        "model": "coder:latest",
        "created_at": "2026-11-24T12:00:00.123456000Z",
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "length",
        "total_duration": 1_000_000_000,
        "load_duration": 500_000_000,
        "prompt_eval_count": 5,
        "prompt_eval_duration": 250_000_000,
        "eval_count": 2,
        "eval_duration": 250_000_000,
    }
    assert json.loads(json.dumps(final)) == final  # one NDJSON line each


def test_generate_chunks_carry_response_and_zero_stats_are_left_out() -> None:
    stream = StreamTranslator(model="m", kind="generate", started=1.0, loaded=1.0)
    [chunk] = stream.feed(sse("word", finish="stop"), 1.5, MOMENT)
    assert (chunk["response"], chunk["done"]) == ("word", False)
    final = stream.finish(2.0, MOMENT)
    assert final["done_reason"] == "stop" and final["response"] == ""
    assert "load_duration" not in final and "prompt_eval_count" not in final


def test_streamed_tool_call_fragments_arrive_as_one_call_with_object_arguments() -> None:
    stream = StreamTranslator(model="m", kind="chat", started=0.0, loaded=0.0)
    fragments = [
        {"index": 0, "id": "call_1", "function": {"name": "add", "arguments": '{"a": '}},
        {"index": 0, "function": {"arguments": "1}"}},
    ]
    chunks = []
    for fragment in fragments:
        chunks += stream.feed({"choices": [{"delta": {"tool_calls": [fragment]}}]}, 0.1, MOMENT)
    chunks += stream.feed(sse(finish="tool_calls"), 0.2, MOMENT)
    [call_chunk] = chunks
    assert call_chunk["done"] is False
    assert call_chunk["message"]["tool_calls"] == [
        {"id": "call_1", "function": {"index": 0, "name": "add", "arguments": {"a": 1}}}
    ]
    assert stream.finish(0.3, MOMENT)["done_reason"] == "stop"


@pytest.mark.parametrize("kind", ["chat", "generate"])
@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_the_engines_reasoning_is_ollamas_thinking_not_dropped(kind: str, field: str) -> None:
    """mlx_lm.server splits a thinking model's reasoning into ``reasoning``
    (DeepSeek-style servers: ``reasoning_content``); Ollama answers it as
    ``thinking``, streamed and merged, and the NDJSON fast path agrees."""
    events: list[dict[str, Any]] = [
        {"choices": [{"delta": {field: "Let me see. "}}]},
        {"choices": [{"delta": {field: "Two."}}]},
        {"choices": [{"delta": {field: "", "content": "2"}, "finish_reason": "stop"}]},
    ]
    stream = StreamTranslator(model="m", kind=kind, started=0.0, loaded=0.0)
    twin = StreamTranslator(model="m", kind=kind, started=0.0, loaded=0.0)
    chunks = []
    for at, event in enumerate(events):
        fed = stream.feed(event, float(at), MOMENT)
        assert twin.feed_ndjson(event, float(at), MOMENT) == b"".join(map(ndjson_line, fed))
        chunks += fed
    chunks.append(stream.finish(3.0, MOMENT))
    merged = merge_stream(chunks, kind)
    if kind == "chat":
        assert chunks[0]["message"] == {
            "role": "assistant",
            "content": "",
            "thinking": "Let me see. ",
        }
        assert (merged["message"]["thinking"], merged["message"]["content"]) == (
            "Let me see. Two.",
            "2",
        )
    else:
        assert (chunks[0]["response"], chunks[0]["thinking"]) == ("", "Let me see. ")
        assert (merged["thinking"], merged["response"]) == ("Let me see. Two.", "2")
    assert stream.first_token == 0.0  # the first thought is the first token


@pytest.mark.parametrize("kind", ["chat", "generate"])
@pytest.mark.parametrize(
    "model", ["coder:latest", 'we"ird\\name', "modèle/ü:7b", "emoji-\U0001f600", "tab\there"]
)
def test_ndjson_lines_are_the_json_of_the_chunks_byte_for_byte(kind: str, model: str) -> None:
    events = [
        sse(""),  # role only: no line
        sse("Hello"),
        sse(' "quoted" \\ back\\slash'),
        sse("new\nline\ttab\x00nul\x1fus\u2028sep"),
        sse("héllo wörld ✓ \U0001f600"),
        sse("</script>&<>"),
        {"choices": [{"index": 0, "delta": {"content": 42}}]},  # not a str: as json.dumps has it
        {"choices": [{"index": 0, "text": ["odd"]}]},
        {"choices": [sse("one")["choices"][0], sse("two")["choices"][0]]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"name": "f"}}]}}]},
        sse("last", finish="tool_calls"),  # with the collected tool call after it
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 9}},
    ]
    by_dict = StreamTranslator(model=model, kind=kind, started=0.0, loaded=0.0)
    by_line = StreamTranslator(model=model, kind=kind, started=0.0, loaded=0.0)
    for at, event in enumerate(events):
        expected = b"".join(ndjson_line(c) for c in by_dict.feed(event, float(at), MOMENT))
        assert by_line.feed_ndjson(event, float(at), MOMENT) == expected
    assert by_line == by_dict  # the same counts, first token and finish reason
    assert by_line.finish(20.0, MOMENT) == by_dict.finish(20.0, MOMENT)


def test_an_ndjson_line_is_compact_unescaped_json() -> None:
    chunk = {"model": "ü", "message": {"content": "a\nb"}, "done": False}
    line = '{"model":"ü","message":{"content":"a\\nb"},"done":false}\n'
    assert ndjson_line(chunk) == line.encode()


def test_stream_false_merges_text_and_keeps_the_final_metadata() -> None:
    chunks = [
        {"model": "m", "message": {"role": "assistant", "content": "a"}, "done": False},
        {"model": "m", "message": {"role": "assistant", "content": "b"}, "done": False},
        {"model": "m", "message": {"role": "assistant", "content": ""}, "done": True,
         "done_reason": "stop", "eval_count": 2},
    ]  # fmt: skip
    merged = merge_stream(chunks, "chat")
    assert merged["message"] == {"role": "assistant", "content": "ab"}
    assert (merged["done"], merged["eval_count"]) == (True, 2)
    generated = merge_stream([{"response": "x"}, {"response": "y", "done": True}], "generate")
    assert generated == {"response": "xy", "done": True}


@pytest.mark.server
def test_a_real_mlx_lm_stream_translates(tiny_model: Path, tmp_path: Path) -> None:
    port = free_port()
    argv = mlx_lm_server_argv(tiny_model, port)
    body = {"messages": [{"role": "user", "content": "hello there"}], "options": {"num_predict": 6}}
    request = chat_request(body, ModelDefaults(parameters={"temperature": 0.0}), None)
    with running_server(argv, port=port, log_path=tmp_path / "mlx.log") as server:
        stream = StreamTranslator(model="tiny", kind="chat", started=0.0, loaded=0.0)
        chunks: list[dict[str, Any]] = []
        with httpx.stream(
            "POST", f"{server.url}/v1/chat/completions", json=request, timeout=120, trust_env=False
        ) as reply:
            assert reply.status_code == 200
            for line in reply.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunks += stream.feed(json.loads(line[6:]), 1.0, MOMENT)
        final = stream.finish(2.0, MOMENT)
        plain = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={**request, "stream": False, "stream_options": None},
            timeout=120,
            trust_env=False,
        ).json()
    text = "".join(c["message"]["content"] for c in chunks)
    assert text and text == plain["choices"][0]["message"]["content"]
    assert (final["done_reason"], final["eval_count"]) == ("length", 6)
    assert final["prompt_eval_count"] > 0


def test_developer_turns_become_system_turns_for_templates_without_the_role() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "Use tabs."},
            {"role": "user", "content": "hi"},
        ]
    }
    qwen = "{% for m in messages %}{% if m.role == 'system' %}...{% endif %}{% endfor %}"
    assert [m["role"] for m in with_template_roles(body, qwen)["messages"]] == [
        "system", "system", "user",
    ]  # fmt: skip
    assert body["messages"][1]["role"] == "developer"  # a new body; the request is kept
    harmony = "{% if message.role == 'developer' %}# Instructions{% endif %}"  # gpt-oss's
    assert with_template_roles(body, harmony) is body
    assert with_template_roles(body, None) is body  # an external server's: not known here
