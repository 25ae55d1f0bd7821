"""``gateway/validate.py`` on literal OpenAI bodies: what goes upstream as it came, what
is reshaped (nulls dropped, one prompt unwrapped) and what is refused with a 400."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest

from mlx_lama.gateway.http import ApiError, JsonObject
from mlx_lama.gateway.validate import Limits, openai_body

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
TEXT = Limits()
VISION = Limits(vision=True)
EMBEDDER = Limits(generates=False, embeds=True)
HINT = 'serve a vision model with backend = "vllm-mlx"'
USER = {"role": "user", "content": "hi"}
PNG_HEAD = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(16)).decode()
IMAGE = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_HEAD}"}}
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}


def chat(**extra: Any) -> JsonObject:
    return {"model": "m", "messages": [USER], **extra}


def completion(**extra: Any) -> JsonObject:
    return {"model": "m", "prompt": "Once", **extra}


def refused(path: str, body: JsonObject, limits: Limits = TEXT) -> str:
    with pytest.raises(ApiError) as caught:
        openai_body(path, body, limits)
    assert caught.value.status == 400
    return caught.value.message


def test_nulls_are_dropped_unknown_keys_kept_and_the_input_left_alone() -> None:
    body = chat(max_tokens=None, temperature=None, tools=None, logit_bias=None, my_key=[1])
    before = copy.deepcopy(body)
    out = openai_body(CHAT, body, TEXT)
    assert out == {"model": "m", "messages": [USER], "my_key": [1]}
    assert body == before
    assert out is not body


def test_sampling_is_checked_by_check_sampling() -> None:
    assert "temperature must be a number" in refused(CHAT, chat(temperature=-1))
    assert openai_body(CHAT, chat(temperature=0.7), TEXT)["temperature"] == 0.7


def test_a_path_without_rules_is_the_callers_mistake() -> None:
    with pytest.raises(ValueError, match="no request rules"):
        openai_body("/v1/responses", chat(), TEXT)


# messages


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "m"}, "messages is required: a list of {role, content} objects"),
        (chat(messages=None), "messages is required"),
        (chat(messages=[]), "messages must not be empty"),
        (chat(messages="hi"), "messages must be a list"),
        (chat(messages=[USER, "hi"]), "messages[1] must be an object"),
        (chat(messages=[{"role": "bot", "content": "x"}]), "messages[0].role must be one of"),
        (chat(messages=[{"content": "x"}]), "system, developer, user, assistant, tool"),
        (chat(messages=[USER, {"role": "user"}]), "messages[1].content is required"),
        (chat(messages=[{"role": "tool", "content": None}]), "messages[0].content is required"),
        (chat(messages=[{"role": "user", "content": 3}]), "a string or a list of content parts"),
        (chat(messages=[{"role": "user", "content": {}}]), "messages[0].content must be"),
        (
            chat(messages=[{"role": "assistant", "tool_calls": {"id": "1"}}]),
            "messages[0].tool_calls must be a list of objects",
        ),
        (
            chat(messages=[{"role": "assistant", "tool_calls": ["x"]}]),
            "messages[0].tool_calls must be a list of objects",
        ),
        (chat(messages=[{"role": "user", "content": "x", "name": 7}]), "name must be a string"),
    ],
)
def test_bad_messages_are_refused(body: JsonObject, message: str) -> None:
    assert message in refused(CHAT, body)


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": role, "content": "x"} for role in ("system", "developer", "user", "tool")],
        [USER, {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]}],
        [USER, {"role": "assistant"}],
        [USER, {"role": "assistant", "content": "", "name": "bot"}],
        [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    ],
)
def test_good_messages_pass_unchanged(messages: list[JsonObject]) -> None:
    assert openai_body(CHAT, chat(messages=messages), TEXT)["messages"] == messages


@pytest.mark.parametrize(
    ("part", "message"),
    [
        ("hi", "messages[0].content[0] must be an object with a type"),
        ({"text": "hi"}, "must be an object with a type"),
        ({"type": "text"}, "messages[0].content[0].text must be a string"),
        ({"type": "text", "text": 1}, ".text must be a string"),
        ({"type": "image_url"}, ".image_url must be an object with a string url"),
        ({"type": "image_url", "image_url": {"url": 5}}, "with a string url"),
        ({"type": "video"}, "messages[0].content[0].type must be text or image_url"),
        ({"type": "input_audio", "input_audio": {}}, "is input_audio: this model takes only"),
        ({"type": "file", "file": {}}, "messages[0].content[0] is file"),
    ],
)
def test_bad_content_parts_are_refused(part: object, message: str) -> None:
    body = chat(messages=[{"role": "user", "content": [part]}])
    assert message in refused(CHAT, body, VISION)


def test_audio_and_files_are_refused_naming_what_the_model_takes() -> None:
    body = chat(messages=[{"role": "user", "content": [{"type": "file", "file": {}}]}])
    assert refused(CHAT, body, VISION).endswith("takes only text and images")
    assert refused(CHAT, body, TEXT).endswith("takes only text")


WEB_IMAGE = {"type": "image_url", "image_url": "http://x/a.png"}


@pytest.mark.parametrize(
    ("image_url", "limits"),
    [(IMAGE, VISION), (WEB_IMAGE, Limits(vision=True, fetches_images=True))],
)
def test_images_pass_for_a_vision_model(image_url: JsonObject, limits: Limits) -> None:
    content = [{"type": "text", "text": "what is this?"}, image_url]
    messages = [{"role": "user", "content": content}]
    assert openai_body(CHAT, chat(messages=messages), limits)["messages"] == messages


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("data:image/png;base64,%%%%", "messages[0].content[0].image_url is not valid base64"),
        ("data:image/png;base64," + base64.b64encode(b"hello").decode(), "holds no image"),
        ("data:image/png,rawbytes", "a data: URL without base64 image bytes"),
        ("https://example.com/cat.png", "is a web address, which this model's engine does not"),
    ],
)
def test_an_image_that_is_not_one_is_refused_before_the_engine(url: str, message: str) -> None:
    """A vision engine answers those with a 500 of its own (bytes) or its own words (a
    URL it will not fetch): the client gets a 400 that says what to send."""
    body = chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": url}]}])
    said = refused(CHAT, body, VISION)
    assert message in said
    assert "PNG, JPEG" in said or "data:image/png;base64" in said


def test_an_image_for_a_text_model_is_refused_with_the_hint() -> None:
    body = chat(
        messages=[USER, {"role": "user", "content": [{"type": "text", "text": "x"}, IMAGE]}]
    )
    message = refused(CHAT, body, Limits(vision_hint=HINT))
    assert message == f"this model takes text only: messages[1].content[1] is an image; {HINT}"
    assert refused(CHAT, body).endswith("is an image")


# tools and tool_choice


def test_tools_pass() -> None:
    bare = {"type": "function", "function": {"name": "f", "description": None}}
    tools = [TOOL, bare, {"type": "function", "function": {"name": "g", "description": "d"}}]
    assert openai_body(CHAT, chat(tools=tools), TEXT)["tools"] == tools


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        ({"type": "function"}, "tools must be a list"),
        ([TOOL] * 129, "tools allows at most 128 tools"),
        ([TOOL, "f"], 'tools[1] must be an object with type "function"'),
        ([{"type": "retrieval", "function": {"name": "f"}}], "tools[0] must be an object"),
        ([{"type": "function"}], "tools[0].function must be an object with a non-empty name"),
        ([{"type": "function", "function": {"name": ""}}], "with a non-empty name"),
        (
            [{"type": "function", "function": {"name": "f", "description": 1}}],
            "tools[0].function.description must be a string",
        ),
        (
            [TOOL, {"type": "function", "function": {"name": "f", "parameters": "{}"}}],
            "tools[1].function.parameters must be a JSON Schema object",
        ),
    ],
)
def test_bad_tools_are_refused(tools: object, message: str) -> None:
    assert message in refused(CHAT, chat(tools=tools))


@pytest.mark.parametrize(
    "choice", ["none", "auto", "required", {"type": "function", "function": {"name": "f"}}]
)
def test_tool_choice_passes(choice: object) -> None:
    assert openai_body(CHAT, chat(tools=[TOOL], tool_choice=choice), TEXT)["tool_choice"] == choice


@pytest.mark.parametrize(
    "choice", ["any", 1, {"type": "function"}, {"type": "function", "function": {"name": 2}}]
)
def test_bad_tool_choice_is_refused(choice: object) -> None:
    assert "tool_choice must be" in refused(CHAT, chat(tools=[TOOL], tool_choice=choice))


# logit_bias


def test_logit_bias_passes() -> None:
    bias = {"50256": -100, "0": 100, "7": 0.5}
    assert openai_body(COMPLETIONS, completion(logit_bias=bias), TEXT)["logit_bias"] == bias
    many = {str(i): 1 for i in range(300)}
    assert openai_body(CHAT, chat(logit_bias=many), TEXT)["logit_bias"] == many


@pytest.mark.parametrize(
    ("bias", "message"),
    [
        ([1, 2], "logit_bias must be an object"),
        ({str(i): 1 for i in range(301)}, "at most 300 entries"),
        ({"-1": 1}, "logit_bias keys must be token ids"),
        ({"abc": 1}, "keys must be token ids"),
        ({"²": 1}, "keys must be token ids"),
        ({"5": 101}, "logit_bias[5] must be a number from -100 to 100"),
        ({"5": True}, "must be a number"),
        ({"5": "1"}, "must be a number"),
        ({"5": float("inf")}, "must be a number"),
        ({"5": 10**400}, "must be a number"),
    ],
)
def test_bad_logit_bias_is_refused(bias: object, message: str) -> None:
    assert message in refused(CHAT, chat(logit_bias=bias))


# completions


@pytest.mark.parametrize(("prompt", "sent"), [("Once", "Once"), ("", ""), (["Once"], "Once")])
def test_a_prompt_goes_up_as_one_string(prompt: object, sent: str) -> None:
    body = completion(prompt=prompt)
    before = copy.deepcopy(body)
    assert openai_body(COMPLETIONS, body, TEXT)["prompt"] == sent
    assert body == before


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        (None, "prompt is required"),
        (["a", "b", "c"], "prompt as a list of 3 prompts is not supported: send one request per"),
        ([1, 2, 3], "prompt as token ids is not supported: send text"),
        ([[1, 2], [3]], "prompt as token ids is not supported"),
        ([], "prompt must be a string"),
        (["a", 1], "prompt must be a string"),
        (5, "prompt must be a string"),
    ],
)
def test_bad_prompts_are_refused(prompt: object, message: str) -> None:
    assert message in refused(COMPLETIONS, completion(prompt=prompt))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"n": 2}, "n must be 1"),
        ({"n": True}, "send n requests"),
        ({"echo": True}, "echo is not supported"),
        ({"best_of": 3}, "best_of is not supported"),
        ({"suffix": 3}, "suffix must be a string"),
    ],
)
def test_unsupported_completion_options_are_refused(extra: JsonObject, message: str) -> None:
    assert message in refused(COMPLETIONS, completion(**extra))


def test_supported_values_of_those_options_pass() -> None:
    extra = {"n": 1, "echo": False, "best_of": 1, "suffix": ""}
    assert openai_body(COMPLETIONS, completion(**extra), TEXT) == completion(**extra)


def test_chat_takes_only_one_choice_too() -> None:
    assert "n must be 1" in refused(CHAT, chat(n=4))
    assert openai_body(CHAT, chat(n=1), TEXT)["n"] == 1


# stream and context


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"stream": "true"}, "stream must be true or false"),
        ({"stream": 1}, "stream must be true or false"),
        ({"stream": True, "stream_options": True}, "stream_options must be an object"),
    ],
)
def test_bad_stream_fields_are_refused(extra: JsonObject, message: str) -> None:
    assert message in refused(CHAT, chat(**extra))


def test_stream_fields_pass() -> None:
    extra = {"stream": True, "stream_options": {"include_usage": True}}
    assert openai_body(COMPLETIONS, completion(**extra), TEXT) == completion(**extra)


@pytest.mark.parametrize("key", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_beyond_the_context_pass_as_they_are(key: str) -> None:
    """Agents ask for more tokens than a small model holds; the answer ends at the end
    of the text or of the context, as from any server (only the cap of check_sampling
    applies)."""
    limits = Limits(context=8192)
    assert openai_body(CHAT, chat(**{key: 100_000}), limits)[key] == 100_000


# embeddings


@pytest.mark.parametrize("given", ["hello", ["a", "b"], ["one"]])
def test_embedding_input_passes(given: object) -> None:
    body = {"model": "m", "input": given, "dimensions": 256, "truncate": False}
    assert openai_body(EMBEDDINGS, body, EMBEDDER) == body


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "m"}, "input is required: a string or a list of strings"),
        ({"input": ""}, "input must not be empty"),
        ({"input": []}, "input must not be empty"),
        ({"input": ["a", ""]}, "input must not be empty"),
        ({"input": [1, 2]}, "input as token ids is not supported: send text"),
        ({"input": [[1], [2]]}, "input as token ids is not supported"),
        ({"input": ["a", 2]}, "input must be a string or a list of strings"),
        ({"input": {"text": "a"}}, "input must be a string or a list of strings"),
        ({"input": "a", "dimensions": 0}, "dimensions must be a positive integer"),
        ({"input": "a", "dimensions": "8"}, "dimensions must be a positive integer"),
        ({"input": "a", "truncate": "yes"}, "truncate must be true or false"),
    ],
)
def test_bad_embedding_bodies_are_refused(body: JsonObject, message: str) -> None:
    assert message in refused(EMBEDDINGS, body, EMBEDDER)


def test_each_model_answers_only_what_it_does() -> None:
    """A text model makes no embeddings and an embedding model no text: a 400 that
    says which endpoints it answers, before anything reaches its engine."""
    message = refused(EMBEDDINGS, {"model": "m", "input": "a"}, TEXT)
    assert message.startswith('"m" does not support embeddings') and 'kind = "embedding"' in message
    for path, body, what in (
        (CHAT, chat(), '"m" does not support chat'),
        (COMPLETIONS, completion(), '"m" does not support generate'),
        (CHAT, {}, "this model does not support chat"),
    ):
        message = refused(path, body, EMBEDDER)
        assert message.startswith(what) and "embedding model" in message
        assert "/v1/embeddings" in message
    both = Limits(embeds=True)  # an external server decides for itself
    assert openai_body(EMBEDDINGS, {"input": "a"}, both) == {"input": "a"}
    assert openai_body(CHAT, chat(), both) == chat()
