"""OpenAI Responses in chat-completions terms and back (``responses.py``,
``responses_answers.py``): pure translation, checked against the wire facts in
shared/docs/agent-apis.md.

The official SDK against a real engine is in test_gateway_agents.py; a tiny
random model never calls a tool or reasons, so those answers are fed here as
the chat-completions events mlx_lm.server sends for them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from mlx_lama.gateway import responses
from mlx_lama.gateway.http import ApiError
from mlx_lama.gateway.responses_answers import ResponseStream


def test_items_become_chat_turns_with_calls_after_their_message() -> None:
    body = responses.chat_request(
        {
            "model": "m",
            "instructions": "Be brief.",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "weather?"},
                                             {"type": "input_image",
                                              "image_url": "data:image/png;base64,AA"}]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "message", "role": "assistant",
                 "content": [{"type": "output_text", "text": "Checking."}]},
                {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "time", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"type": "function_call_output", "call_id": "c2",
                 "output": [{"type": "input_text", "text": "noon"}]},
            ],
            "max_output_tokens": 50,
            "temperature": 0.2,
            "tools": [{"type": "function", "name": "weather", "parameters": {"type": "object"},
                       "strict": True}],
            "tool_choice": {"type": "function", "name": "weather"},
            "store": False,
            "stream": True,
        }
    )  # fmt: skip
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "weather?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": "{}"},
                },
                {"id": "c2", "type": "function", "function": {"name": "time", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "noon"},
    ]
    assert body["max_tokens"] == 50 and body["temperature"] == 0.2 and body["stream"] is True
    assert body["tools"] == [
        {
            "type": "function",
            "function": {"name": "weather", "parameters": {"type": "object"}, "strict": True},
        }
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "weather"}}


def test_a_call_without_a_message_before_it_gets_its_own_assistant_turn() -> None:
    body = responses.chat_request(
        {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]}
    )
    [turn] = body["messages"]
    assert turn["role"] == "assistant" and turn["content"] == ""
    assert [call["id"] for call in turn["tool_calls"]] == ["c"]


@pytest.mark.parametrize(
    ("text", "wanted"),
    [
        (None, None),
        ({"format": {"type": "text"}}, None),
        ({"format": {"type": "json_object"}}, {"type": "json_object"}),
        (
            {"format": {"type": "json_schema", "name": "pet", "schema": {"type": "object"},
                        "strict": True}},
            {"type": "json_schema",
             "json_schema": {"name": "pet", "schema": {"type": "object"}, "strict": True}},
        ),
    ],
)  # fmt: skip
def test_text_format_is_the_response_format(text: object, wanted: object) -> None:
    body = responses.chat_request({"input": "hi", "text": text})
    assert body.get("response_format") == wanted


@pytest.mark.parametrize(
    ("effort", "wanted"), [(None, None), ("minimal", False), ("none", False), ("high", True)]
)
def test_reasoning_effort_is_the_thinking_switch(effort: str | None, wanted: bool | None) -> None:
    assert responses.thinking_wanted({"reasoning": {"effort": effort}}) is wanted


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"previous_response_id": "resp_1"}, "keeps no responses"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "keeps no responses"),
        ({"input": ""}, "input"),
        ({"input": [{"type": "web_search_call"}]}, '"web_search_call" items'),
        ({"input": [{"role": "tool", "content": "x"}]}, "role"),
        ({"input": [{"role": "user", "content": [{"type": "input_file"}]}]}, "input_file"),
        ({"tools": [{"type": "file_search"}]}, '"file_search" tools'),
        ({"text": {"format": {"type": "xml"}}}, "text.format"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"background": True}, "background"),
        ({"reasoning": {"effort": "max"}}, "reasoning.effort"),
    ],
)
def test_what_no_engine_here_can_do_is_a_400_naming_it(changes: dict[str, Any], said: str) -> None:
    with pytest.raises(ApiError) as refused:
        body = {"model": "m", "input": "hi"} | changes
        responses.chat_request(body)
        responses.thinking_wanted(body)
    assert refused.value.status == 400
    assert said in refused.value.message


# -- answers


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def events(raw: bytes) -> list[dict[str, Any]]:
    """The data of each server-sent event, checking its name is its type."""
    found = []
    for frame in raw.decode().split("\n\n"):
        if frame:
            name_line, data_line = frame.split("\n")
            data = json.loads(data_line.removeprefix("data: "))
            assert data["type"] == name_line.removeprefix("event: ")
            found.append(data)
    return found


def answer(stream: ResponseStream, finish: str = "tool_calls") -> bytes:
    raw = stream.start()
    raw += stream.feed(chunk({"role": "assistant", "reasoning": "Hm."}), 2.0)
    raw += stream.feed(chunk({"content": "Sure"}), 2.1)
    raw += stream.feed(chunk({"content": "."}), 2.2)
    call = {"index": 0, "id": "call_1", "function": {"name": "weather", "arguments": '{"c'}}
    raw += stream.feed(chunk({"tool_calls": [call]}), 2.3)
    more = {"index": 0, "function": {"arguments": '": 1}'}}
    raw += stream.feed(chunk({"tool_calls": [more]}, finish), 2.4)
    raw += stream.feed({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}}, 2.5)
    return raw + stream.finish()


def test_a_stream_becomes_reasoning_message_and_call_items() -> None:
    request = {"model": "m", "input": "hi", "instructions": "Be brief.", "tools": []}
    stream = ResponseStream("m", request, created=1_700_000_000.5)
    sent = events(answer(stream))
    assert [e["type"] for e in sent] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    assert [e["sequence_number"] for e in sent] == list(range(len(sent)))
    created = sent[0]["response"]
    assert created["status"] == "in_progress" and created["output"] == []
    assert created["created_at"] == 1_700_000_000 and created["instructions"] == "Be brief."
    assert sent[10]["text"] == "Sure."
    assert sent[16]["arguments"] == '{"c": 1}' and sent[16]["name"] == "weather"
    done = sent[-1]["response"]
    assert done == stream.whole()
    assert [item["type"] for item in done["output"]] == ["reasoning", "message", "function_call"]
    assert done["output"][0]["content"] == [{"type": "reasoning_text", "text": "Hm."}]
    assert done["output"][1]["content"] == [
        {"type": "output_text", "text": "Sure.", "annotations": []}
    ]
    assert done["output"][2] | {"id": "x"} == {
        "type": "function_call", "id": "x", "call_id": "call_1", "name": "weather",
        "arguments": '{"c": 1}', "status": "completed",
    }  # fmt: skip
    assert done["usage"]["input_tokens"] == 9 and done["usage"]["total_tokens"] == 13
    assert len({item["id"] for item in done["output"]}) == 3


def test_an_answer_cut_short_is_incomplete() -> None:
    stream = ResponseStream("m", {}, created=0)
    last = events(answer(stream, finish="length"))[-1]
    assert last["type"] == "response.incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_a_failed_stream_ends_with_response_failed() -> None:
    stream = ResponseStream("m", {}, created=0)
    [failed] = events(stream.fail("model 'm' stopped answering"))
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {
        "code": "server_error",
        "message": "model 'm' stopped answering",
    }
