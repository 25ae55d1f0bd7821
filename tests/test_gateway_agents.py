"""The agents' APIs with their official clients: the ``anthropic`` SDK on ``/v1/messages``
and the ``openai`` SDK on ``/v1/responses``, against ``mlx-lama serve`` (a real
subprocess) serving the tiny model through a real ``mlx_lm.server``.

One gateway for the module, as in test_gateway_clients.py: its model server is
started once, on demand, and the tests only chat. The manifest gives the model a
system prompt and parameters, and the name Claude Code sends as an alias.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from tests.fixtures.gateway import (
    RunningGateway,
    isolated_gateway_process,
    wait_for,
)

pytestmark = [pytest.mark.server, pytest.mark.xdist_group("agents")]

MANIFEST = """\
version = 1

[server]
keep_alive = "10m"

[aliases]
"claude-sonnet-4-5" = "tiny"   # what Claude Code asks for

[models."tiny"]
path = "{model}"
system = "You are terse."

[models."tiny".parameters]
num_predict = 6
temperature = 0.0
"""

WEATHER: Any = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[RunningGateway]:
    root = tmp_path_factory.mktemp("gateway-agents")
    with isolated_gateway_process(root, MANIFEST.format(model=tiny_model)) as gateway:
        yield gateway


@pytest.fixture
def claude(served: RunningGateway) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=served.url, api_key="local", max_retries=0) as client:
        yield client


def hello(text: str = "hello there") -> list[Any]:
    return [{"role": "user", "content": text}]


# -- Anthropic Messages


def test_messages_create_answers_a_message_with_usage(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(model="tiny", max_tokens=4, messages=hello())
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.model == "tiny"
    assert [block.type for block in message.content] == ["text"]
    text = message.content[0]
    assert isinstance(text, anthropic.types.TextBlock) and text.text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 0
    assert 0 < message.usage.output_tokens <= 4


def test_messages_stream_sends_every_event_in_order(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="claude-sonnet-4-5", max_tokens=5, messages=hello()
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start"
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 1
    assert "content_block_delta" in kinds
    assert final.model == "claude-sonnet-4-5"  # the name asked for, echoed
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert final.content[0].type == "text" and final.content[0].text
    assert final.usage.output_tokens == 5 or final.stop_reason == "end_turn"
    assert final.usage.input_tokens > 0


def test_a_tool_and_its_round_trip_reach_the_model(claude: anthropic.Anthropic) -> None:
    first = claude.messages.create(
        model="tiny",
        max_tokens=3,
        tools=[WEATHER],
        tool_choice={"type": "auto"},
        messages=hello("weather in Paris?"),
    )
    assert first.stop_reason in ("end_turn", "max_tokens", "tool_use")
    history: list[Any] = [
        *hello("weather in Paris?"),
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "checking"},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Paris"}},
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}],
        },
    ]  # fmt: skip
    second = claude.messages.create(
        model="tiny",
        max_tokens=3,
        tools=[WEATHER],
        messages=history,
    )
    # the assistant's call and the tool's answer are in the prompt
    assert second.usage.input_tokens > first.usage.input_tokens


def test_count_tokens_counts_what_create_reads(claude: anthropic.Anthropic) -> None:
    asked: dict[str, Any] = {"model": "tiny", "system": "Be brief.", "messages": hello()}
    counted = claude.messages.count_tokens(**asked)
    message = claude.messages.create(max_tokens=2, **asked)
    assert counted.input_tokens == message.usage.input_tokens > 0


def test_errors_come_in_anthropics_shape(
    claude: anthropic.Anthropic, served: RunningGateway
) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="no-such-model", max_tokens=2, messages=hello())
    assert missing.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": missing.value.body["error"]["message"]},  # type: ignore[index]
    }
    assert "no-such-model" in str(missing.value)
    with pytest.raises(anthropic.BadRequestError, match="document blocks"):
        claude.messages.create(
            model="tiny",
            max_tokens=2,
            messages=[{"role": "user", "content": [
                {"type": "document",
                 "source": {"type": "text", "media_type": "text/plain", "data": "x"}},
            ]}],
        )  # fmt: skip
    with pytest.raises(anthropic.BadRequestError, match="thinking"):
        claude.messages.create(
            model="tiny",
            max_tokens=2,
            thinking={"type": "enabled", "budget_tokens": 1024},
            messages=hello(),
        )
    reply = httpx.post(served.url + "/v1/messages", json={"model": "tiny", "messages": hello()})
    assert reply.status_code == 400
    assert reply.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in reply.json()["error"]["message"]


# -- OpenAI Responses


@pytest.fixture
def oai(served: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=served.url + "/v1", api_key="local", max_retries=0) as client:
        yield client


FUNCTION: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": WEATHER["input_schema"],
}


def test_responses_create_answers_a_response_with_usage(oai: openai.OpenAI) -> None:
    response = oai.responses.create(
        model="tiny", instructions="Be brief.", input="hello there", max_output_tokens=4
    )
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.model == "tiny"
    assert response.status in ("completed", "incomplete")
    assert [item.type for item in response.output] == ["message"]
    assert response.output_text  # the SDK joins the text parts
    assert response.usage is not None
    assert response.usage.input_tokens > 0 and 0 < response.usage.output_tokens <= 4
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    if response.status == "incomplete":
        assert response.incomplete_details is not None
        assert response.incomplete_details.reason == "max_output_tokens"


def test_responses_stream_sends_the_response_events(oai: openai.OpenAI) -> None:
    with oai.responses.stream(model="tiny", input="hello", max_output_tokens=5) as stream:
        events = list(stream)
    last = events[-1]
    # cut at max_output_tokens, the answer ends with response.incomplete, as OpenAI's does
    assert last.type in ("response.completed", "response.incomplete")
    final = last.response
    assert final.status == last.type.removeprefix("response.")
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert "response.output_text.delta" in kinds
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed" if final.status == "completed" else "response.incomplete",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert final.output_text == deltas and deltas


def test_a_function_tool_and_its_output_reach_the_model(oai: openai.OpenAI) -> None:
    first = oai.responses.create(
        model="tiny", input="weather in Paris?", tools=[FUNCTION], max_output_tokens=3
    )
    assert first.usage is not None
    second = oai.responses.create(
        model="tiny",
        tools=[FUNCTION],
        max_output_tokens=3,
        input=[
            {"role": "user", "content": "weather in Paris?"},
            {"type": "function_call", "call_id": "c1", "name": "get_weather",
             "arguments": '{"city": "Paris"}'},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        ],
    )  # fmt: skip
    assert second.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens


def test_what_the_gateway_cannot_do_is_a_400(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="vllm-mlx"):  # mlx-lm cannot constrain
        oai.responses.create(model="tiny", input="hi", text={"format": {"type": "json_object"}})
    with pytest.raises(openai.BadRequestError, match="keeps no responses"):
        oai.responses.create(model="tiny", input="hi", previous_response_id="resp_1")
    with pytest.raises(openai.BadRequestError, match="web_search"):
        oai.responses.create(model="tiny", input="hi", tools=[{"type": "web_search"}])
    with pytest.raises(openai.NotFoundError, match="keeps no responses"):
        oai.responses.retrieve("resp_1")


# -- the same prompt on every API


def test_the_manifest_applies_alike_on_every_api(
    claude: anthropic.Anthropic, served: RunningGateway
) -> None:
    """The system prompt and parameters of the manifest entry reach the model the same
    way whichever API asks: the same prompt tokens, answers no longer than num_predict."""
    with ollama.Client(host=served.url) as client:
        native = client.chat("tiny", messages=hello("hi"))
    with openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0) as oai:
        chat = oai.chat.completions.create(model="tiny", messages=hello("hi"))
        response = oai.responses.create(model="tiny", input="hi")
    message = claude.messages.create(model="tiny", max_tokens=1000, messages=hello("hi"))
    assert chat.usage is not None and response.usage is not None
    prompts = {
        "ollama": native.prompt_eval_count,
        "openai": chat.usage.prompt_tokens,
        "anthropic": message.usage.input_tokens,
        "responses": response.usage.input_tokens,
    }
    assert len(set(prompts.values())) == 1, prompts
    with openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0) as oai:
        own = oai.chat.completions.create(
            model="tiny", messages=[{"role": "system", "content": "x"}, *hello("hi")]
        )
    assert own.usage is not None
    assert own.usage.prompt_tokens < chat.usage.prompt_tokens  # "You are terse." was there
    assert chat.usage.completion_tokens <= 6  # num_predict, with no max_tokens asked
    assert response.usage.output_tokens <= 6


# -- the request log


def test_every_request_is_logged_once_with_its_method(
    claude: anthropic.Anthropic, served: RunningGateway
) -> None:
    """A line in daemon.log and a place in /mlx-lama/stats for every request, a model's
    (with its tokens) and the others (a list, a refused body, an unknown path), once
    each; the routes dashboards poll are left out."""
    with claude.messages.stream(model="tiny", max_tokens=2, messages=hello()) as stream:
        stream.until_done()
    with httpx.Client(base_url=served.url) as http:
        assert http.get("/api/tags").status_code == 200
        assert http.post("/api/chat", content=b"{not json").status_code == 400
        assert http.get("/no/such/path").status_code == 404
        assert http.get("/health").status_code == 200
        recent = http.get("/mlx-lama/stats").json()["recent"][:4]
    seen = [(r["method"], r["endpoint"], r["model"], r["status"]) for r in recent]
    assert seen == [
        ("GET", "(no route)", "", 404),
        ("POST", "/api/chat", "", 400),
        ("GET", "/api/tags", "", 200),
        ("POST", "/v1/messages", "tiny", 200),
    ]
    assert recent[3]["completion_tokens"] == 2
    process = served.process
    assert process is not None
    wait_for(lambda: "GET (no route) - 404" in process.log_tail(), 10, "the log lines")
    lines = process.log_tail().splitlines()
    assert any(re.search(r"POST /v1/messages tiny 200 [0-9.]+s tokens \d+\+2$", x) for x in lines)
    assert any(re.search(r"GET /api/tags - 200 [0-9.]+s$", x) for x in lines)
    assert not any("/health" in x or "/mlx-lama/stats" in x for x in lines)
