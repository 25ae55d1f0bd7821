"""Images through the gateway to a vision model, with the clients people send them
with: the ``ollama`` client's ``chat``/``generate`` (``images``), the ``openai``
client's chat completion (an ``image_url`` part) and the ``anthropic`` client's
``messages.create`` (a base64 image block), against ``mlx-lama serve`` (a real
subprocess) that starts vllm-mlx for a tiny random Qwen2-VL on demand, beside a
text model on mlx-lm.

The answers are gibberish, so what proves an image reached the model is the prompt
it counted: a 112 x 112 image is 16 image tokens between a vision start and end
token, 18 more than the same words alone; and two different images give different
answers to the same words, so the pixels got there too.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import ollama
import openai
import pytest
from openai.types.chat import ChatCompletionContentPartParam
from PIL import Image

from tests.fixtures.gateway import RunningGateway, isolated_gateway_process
from tests.fixtures.tiny_model import VOCAB_WORDS
from tests.fixtures.tiny_vision import image_tokens

pytestmark = [
    pytest.mark.server,
    pytest.mark.engine("vllm-mlx"),
    pytest.mark.xdist_group("vision"),
]

MANIFEST = """\
version = 1

[server]
keep_alive = "10m"

[models."seer"]
path = "{vision}"
backend = "vllm-mlx"

[models."seer".parameters]
num_predict = 6
temperature = 0

[models."tiny"]
path = "{text}"

[models."tiny".parameters]
num_predict = 6
"""

SIDE = 112  # pixels: exactly what the processor scales every image to (no resize)
IMAGE_PROMPT_TOKENS = image_tokens(SIDE, SIDE) + 2  # and <|vision_start|>, <|vision_end|>
TEXT_ONLY = "this model takes text only"


def png(color: tuple[int, int, int], *, stripe: tuple[int, int, int] | None = None) -> bytes:
    """A SIDE x SIDE PNG of ``color``, with a band of ``stripe`` across the middle."""
    image = Image.new("RGB", (SIDE, SIDE), color)
    if stripe is not None:
        image.paste(stripe, (0, SIDE // 3, SIDE, 2 * SIDE // 3))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


RED = png((200, 30, 30), stripe=(250, 250, 250))
BLUE = png((20, 40, 220))
NOT_AN_IMAGE = b"this is not an image at all"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def data_url(data: bytes) -> str:
    return f"data:image/png;base64,{b64(data)}"


def words(text: str | None) -> list[str]:
    """The answer's words, each one of the tiny vocabulary's (else it decoded wrong)."""
    found = (text or "").split()
    assert found, f"an empty answer: {text!r}"
    assert set(found) <= set(VOCAB_WORDS), f"not the tiny vocabulary: {text!r}"
    return found


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tiny_vision_model: Path
) -> Iterator[RunningGateway]:
    root = tmp_path_factory.mktemp("gateway-vision")
    text = MANIFEST.format(vision=tiny_vision_model, text=tiny_model)
    with isolated_gateway_process(root, text) as gateway:
        yield gateway


@pytest.fixture
def client(served: RunningGateway) -> Iterator[ollama.Client]:
    with ollama.Client(host=served.url, timeout=120) as ollama_client:
        yield ollama_client


@pytest.fixture
def oai(served: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{served.url}/v1", api_key="local", max_retries=0, timeout=120
    ) as sdk:
        yield sdk


@pytest.fixture
def claude(served: RunningGateway) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=served.url, api_key="local", max_retries=0, timeout=120
    ) as sdk:
        yield sdk


def test_ollama_chat_sends_the_image_to_the_model(client: ollama.Client) -> None:
    question = "what is this"
    seen = client.chat(
        model="seer", messages=[{"role": "user", "content": question, "images": [RED]}]
    )
    blind = client.chat(model="seer", messages=[{"role": "user", "content": question}])
    words(seen.message.content)
    words(blind.message.content)
    assert seen.done and seen.model == "seer"
    assert seen.prompt_eval_count is not None and blind.prompt_eval_count is not None
    assert seen.prompt_eval_count - blind.prompt_eval_count == IMAGE_PROMPT_TOKENS


def test_ollama_generate_sends_the_image_to_the_model(client: ollama.Client) -> None:
    prompt = "tell me about the picture"
    seen = client.generate(model="seer", prompt=prompt, images=[b64(RED)])
    blind = client.generate(model="seer", prompt=prompt)
    words(seen.response)
    words(blind.response)
    assert seen.prompt_eval_count is not None and blind.prompt_eval_count is not None
    assert seen.prompt_eval_count - blind.prompt_eval_count == IMAGE_PROMPT_TOKENS


def test_openai_image_url_part_reaches_the_model_pixels_and_all(oai: openai.OpenAI) -> None:
    def ask(image: bytes | None) -> tuple[str, int]:
        content: list[ChatCompletionContentPartParam] = [
            {"type": "text", "text": "what do you see"}
        ]
        if image is not None:
            content.append({"type": "image_url", "image_url": {"url": data_url(image)}})
        answer = oai.chat.completions.create(
            model="seer",
            messages=[{"role": "user", "content": content}],
            max_tokens=6,
            temperature=0,
        )
        assert answer.usage is not None and answer.model == "seer"
        return " ".join(words(answer.choices[0].message.content)), answer.usage.prompt_tokens

    red, red_tokens = ask(RED)
    blue, blue_tokens = ask(BLUE)
    _, blind_tokens = ask(None)
    assert red_tokens - blind_tokens == IMAGE_PROMPT_TOKENS
    assert blue_tokens == red_tokens  # the same size, so the same number of tokens
    assert red != blue  # the same words, different pixels: the pixels reached the model


def test_anthropic_image_block_reaches_the_model(claude: anthropic.Anthropic) -> None:
    question: anthropic.types.TextBlockParam = {"type": "text", "text": "describe it"}
    picture: anthropic.types.ImageBlockParam = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": b64(RED)},
    }
    seen = claude.messages.create(
        model="seer", max_tokens=6, messages=[{"role": "user", "content": [picture, question]}]
    )
    blind = claude.messages.create(
        model="seer", max_tokens=6, messages=[{"role": "user", "content": [question]}]
    )
    for answer in (seen, blind):
        assert answer.content and answer.content[0].type == "text"
        words(answer.content[0].text)
    assert seen.usage.input_tokens - blind.usage.input_tokens == IMAGE_PROMPT_TOKENS


def test_show_lists_vision_for_the_vision_model_only(client: ollama.Client) -> None:
    assert "vision" in (client.show("seer").capabilities or [])
    assert "vision" not in (client.show("tiny").capabilities or [])


def test_a_text_model_refuses_an_image_in_every_api(served: RunningGateway) -> None:
    """A 400 naming the reason, in each API's own error shape, before any engine runs
    (an engine would drop the image or fail on it)."""
    image_part = {"type": "image_url", "image_url": {"url": data_url(RED)}}
    with httpx.Client(base_url=served.url, timeout=60, trust_env=False) as http:
        ollama_chat = http.post(
            "/api/chat",
            json={
                "model": "tiny",
                "stream": False,
                "messages": [{"role": "user", "content": "what is this", "images": [b64(RED)]}],
            },
        )
        ollama_generate = http.post(
            "/api/generate",
            json={"model": "tiny", "stream": False, "prompt": "what", "images": [b64(RED)]},
        )
        openai_chat = http.post(
            "/v1/chat/completions",
            json={
                "model": "tiny",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "hi"}, image_part]}
                ],
            },
        )
        anthropic_messages = http.post(
            "/v1/messages",
            json={
                "model": "tiny",
                "max_tokens": 6,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/png",
                                    "data": b64(RED),
                                },
                            },
                            {"type": "text", "text": "hi"},
                        ],
                    }
                ],
            },
        )
    for reply in (ollama_chat, ollama_generate, openai_chat, anthropic_messages):
        assert reply.status_code == 400, reply.text
    assert TEXT_ONLY in ollama_chat.json()["error"]
    assert TEXT_ONLY in ollama_generate.json()["error"]
    assert TEXT_ONLY in openai_chat.json()["error"]["message"]
    assert anthropic_messages.json()["type"] == "error"
    assert anthropic_messages.json()["error"]["type"] == "invalid_request_error"
    assert TEXT_ONLY in anthropic_messages.json()["error"]["message"]


def test_the_clients_raise_the_text_only_refusal(
    client: ollama.Client, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    with pytest.raises(ollama.ResponseError) as refused:
        client.chat(model="tiny", messages=[{"role": "user", "content": "hi", "images": [RED]}])
    assert refused.value.status_code == 400 and TEXT_ONLY in refused.value.error
    with pytest.raises(openai.BadRequestError, match=TEXT_ONLY):
        oai.chat.completions.create(
            model="tiny",
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": data_url(RED)}}],
                }
            ],
        )
    with pytest.raises(anthropic.BadRequestError, match=TEXT_ONLY):
        claude.messages.create(
            model="tiny",
            max_tokens=6,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/png",
                                "data": b64(RED),
                            },
                        }
                    ],
                }
            ],
        )


def test_bytes_that_are_no_image_are_a_400_not_the_engines_500(served: RunningGateway) -> None:
    """vllm-mlx answers such bytes with a 500 of its own (a 502 through the gateway,
    "Internal server error"); the gateway looks at them first and says what to send."""
    with httpx.Client(base_url=served.url, timeout=60, trust_env=False) as http:
        ollama_chat = http.post(
            "/api/chat",
            json={
                "model": "seer",
                "stream": False,
                "messages": [{"role": "user", "content": "what", "images": [b64(NOT_AN_IMAGE)]}],
            },
        )
        openai_chat = http.post(
            "/v1/chat/completions",
            json={
                "model": "seer",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}
                        ],
                    }
                ],
            },
        )
    assert ollama_chat.status_code == 400, ollama_chat.text
    assert "holds no image" in ollama_chat.json()["error"]
    assert "PNG, JPEG" in ollama_chat.json()["error"]
    assert openai_chat.status_code == 400, openai_chat.text
    assert "does not fetch" in openai_chat.json()["error"]["message"]
