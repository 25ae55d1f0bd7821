"""Anthropic Messages in OpenAI terms and back (``anthropic.py``, ``anthropic_answers.py``):
pure translation, checked against the wire facts in shared/docs/agent-apis.md.

The official SDK against a real engine is in test_gateway_agents.py; a tiny
random model never calls a tool or thinks, so those answers are fed here as
the chat-completions events mlx_lm.server sends for them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from mlx_lama.gateway import anthropic
from mlx_lama.gateway.anthropic_answers import MessageStream
from mlx_lama.gateway.http import ApiError
from mlx_lama.gateway.security import error_body


def request(**changes: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]} | (
        changes
    )


def test_system_blocks_and_sampling_become_the_chat_request() -> None:
    body = anthropic.chat_request(
        request(
            system=[{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}],
            temperature=0.5,
            top_k=4,
            stop_sequences=["END"],
            stream=True,
            metadata={"user_id": "u"},
        )
    )
    assert body == {
        "messages": [
            {"role": "system", "content": "One.\n\nTwo."},
            {"role": "user", "content": "hi"},
        ],
        "max_tokens": 10,
        "temperature": 0.5,
        "top_k": 4,
        "stop": ["END"],
        "stream": True,
    }


def test_tool_use_and_results_become_calls_and_tool_messages() -> None:
    image = {"type": "base64", "media_type": "image/png", "data": "AAAA"}
    body = anthropic.chat_request(
        request(
            messages=[
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Oslo"}},
                ]},
                {"role": "user", "content": [
                    {"type": "text", "text": "and this:"},
                    {"type": "tool_result", "tool_use_id": "t1", "is_error": True,
                     "content": [{"type": "text", "text": "down"},
                                 {"type": "image", "source": image}]},
                ]},
            ],
            tools=[{"name": "weather", "description": "d", "input_schema": {"type": "object"}}],
            tool_choice={"type": "tool", "name": "weather", "disable_parallel_tool_use": True},
        )
    )  # fmt: skip
    assert body["messages"] == [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": "Checking.",  # earlier thinking is left out, as Anthropic does
            "tool_calls": [
                {
                    "id": "t1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "t1", "content": "Error: down"},  # right after the call
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "and this:"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        },
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {"name": "weather", "parameters": {"type": "object"}, "description": "d"},
        }
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert body["parallel_tool_calls"] is False


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "system goes in system"),
        ({"messages": [{"role": "user", "content": [{"type": "document"}]}]}, "document"),
        ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, '"video"'),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "server tools"),
        ({"tools": [{"name": "f"}]}, "input_schema"),
        ({"tool_choice": {"type": "any"}}, "needs tools"),
        ({"temperature": 1.5}, "from 0 to 1"),
        ({"mcp_servers": [{"url": "x"}]}, "mcp_servers"),
        ({"stream": "yes"}, "stream"),
    ],
)
def test_what_no_engine_here_can_do_is_a_400_naming_it(changes: dict[str, Any], said: str) -> None:
    with pytest.raises(ApiError) as refused:
        anthropic.chat_request(request(**changes))
    assert refused.value.status == 400
    assert said in refused.value.message


def test_count_tokens_needs_no_max_tokens() -> None:
    body = anthropic.chat_request(request(max_tokens=None), counting=True)
    assert "max_tokens" not in body


@pytest.mark.parametrize(
    ("thinking", "wanted"),
    [
        (None, None),
        ({"type": "enabled", "budget_tokens": 2048}, True),
        ({"type": "disabled"}, False),
        ({"type": "adaptive"}, None),
        ({"type": "between_tools"}, None),
    ],
)
def test_thinking_is_a_switch(thinking: object, wanted: bool | None) -> None:
    assert anthropic.thinking_wanted(request(thinking=thinking)) is wanted


def test_errors_have_anthropics_shape_under_messages_only() -> None:
    assert json.loads(error_body("/v1/messages", 404, "no model")) == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "no model"},
    }
    assert json.loads(error_body("/v1/messages/count_tokens", 529, "busy"))["error"] == {
        "type": "overloaded_error",
        "message": "busy",
    }
    assert json.loads(error_body("/v1/chat/completions", 404, "x"))["error"]["type"] == (
        "not_found_error"
    )
    assert "type" not in json.loads(error_body("/v1/chat/completions", 404, "x"))


# -- answers


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(name, data) of each server-sent event, checking each data's type is its name."""
    found = []
    for frame in raw.decode().split("\n\n"):
        if not frame:
            continue
        name_line, data_line = frame.split("\n")
        name, data = name_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name
        found.append((name, data))
    return found


def answer_with_thinking_text_and_a_call(stream: MessageStream) -> bytes:
    raw = stream.start()
    raw += stream.feed(chunk({"role": "assistant", "reasoning": "Let me "}), 1.0)
    raw += stream.feed(chunk({"reasoning": "think."}), 1.1)
    raw += stream.feed(chunk({"content": "Sure."}), 1.2)
    call = {"index": 0, "id": "call_9", "function": {"name": "weather", "arguments": '{"ci'}}
    raw += stream.feed(chunk({"tool_calls": [call]}), 1.3)
    more = {"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}
    raw += stream.feed(chunk({"tool_calls": [more]}, "tool_calls"), 1.4)
    usage = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
    raw += stream.feed({"choices": [], "usage": usage}, 1.5)
    return raw + stream.finish()


def test_a_stream_becomes_blocks_of_thinking_text_and_tool_use() -> None:
    stream = MessageStream("claude-sonnet-4-5")
    sent = events(answer_with_thinking_text_and_a_call(stream))
    assert [name for name, _ in sent] == [
        "message_start", "ping",
        "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_delta", "content_block_stop",  # thinking, then its signature
        "content_block_start", "content_block_delta", "content_block_stop",  # text
        "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop",  # the tool call's arguments, as they came
        "message_delta", "message_stop",
    ]  # fmt: skip
    start = sent[0][1]["message"]
    assert start["model"] == "claude-sonnet-4-5" and start["content"] == []
    starts = [data for name, data in sent if name == "content_block_start"]
    assert [s["index"] for s in starts] == [0, 1, 2]
    assert starts[0]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert starts[2]["content_block"] == {
        "type": "tool_use", "id": "call_9", "name": "weather", "input": {},
    }  # fmt: skip
    deltas = [data["delta"] for name, data in sent if name == "content_block_delta"]
    assert deltas[0] == {"type": "thinking_delta", "thinking": "Let me "}
    assert deltas[2] == {"type": "signature_delta", "signature": ""}
    assert deltas[3] == {"type": "text_delta", "text": "Sure."}
    assert "".join(d["partial_json"] for d in deltas[4:]) == '{"city": "Oslo"}'
    end = sent[-2][1]
    assert end["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert end["usage"] == {"input_tokens": 12, "output_tokens": 7}
    assert stream.first_token == 1.0 and stream.prompt_tokens == 12


def test_the_whole_message_has_the_same_blocks_with_input_parsed() -> None:
    stream = MessageStream("m")
    answer_with_thinking_text_and_a_call(stream)
    message = stream.whole()
    assert message["content"] == [
        {"type": "thinking", "thinking": "Let me think.", "signature": ""},
        {"type": "text", "text": "Sure."},
        {"type": "tool_use", "id": "call_9", "name": "weather", "input": {"city": "Oslo"}},
    ]
    assert message["stop_reason"] == "tool_use"
    assert message["usage"]["input_tokens"] == 12 and message["usage"]["output_tokens"] == 7
    assert message["id"].startswith("msg_") and message["type"] == "message"


@pytest.mark.parametrize(("finish", "reason"), [("stop", "end_turn"), ("length", "max_tokens")])
def test_stop_reasons(finish: str, reason: str) -> None:
    stream = MessageStream("m")
    stream.feed(chunk({"content": "x"}, finish), 0.0)
    assert stream.whole()["stop_reason"] == reason


def test_a_failed_stream_ends_with_an_error_event() -> None:
    [(name, data)] = events(MessageStream("m").fail("model 'm' stopped answering"))
    assert name == "error"
    assert data["error"] == {"type": "api_error", "message": "model 'm' stopped answering"}
