"""The gateway in front of a real ``vllm-mlx`` server: the engine serves the model under
its manifest name, so the gateway rewrites ``model`` to that name and back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anthropic
import httpx
import ollama
import openai
import pytest

from tests.fixtures.gateway import gateway_in_thread

pytestmark = [pytest.mark.server, pytest.mark.engine("vllm-mlx")]


def test_ollama_and_openai_requests_reach_vllm_mlx_under_the_served_name(
    tmp_path: Path, tiny_model: Path
) -> None:
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(
        f'version = 1\n\n[models."batched"]\npath = "{tiny_model}"\nbackend = "vllm-mlx"\n',
        encoding="utf-8",
    )
    with gateway_in_thread(manifest) as running:
        with ollama.Client(host=running.url) as client:
            answer = client.chat(
                "batched:latest",
                messages=[{"role": "user", "content": "hi"}],
                options={"num_predict": 3},
            )
            assert answer.model == "batched:latest"
            assert answer.message.content and answer.done
            assert [m.model for m in client.ps().models] == ["batched:latest"]
        with openai.OpenAI(base_url=running.url + "/v1", api_key="unused") as oai:
            completion = oai.completions.create(model="batched", prompt="once", max_tokens=3)
            assert completion.model == "batched"
            assert completion.choices[0].text


def test_concurrent_requests_wait_their_turn_on_vllm_mlx_without_batching(
    tmp_path: Path, tiny_model: Path
) -> None:
    """Without --continuous-batching, vllm-mlx answers a second request at once with
    "route is busy" (an error inside a 200 stream); the gateway sends one at a time."""
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(
        f'version = 1\n\n[models."single"]\npath = "{tiny_model}"\nbackend = "vllm-mlx"\n',
        encoding="utf-8",
    )

    async def ask_all(url: str) -> list[str]:
        client = ollama.AsyncClient(host=url)

        async def ask(i: int) -> str:
            parts = []
            stream = await client.chat(
                "single",
                messages=[{"role": "user", "content": f"question {i}"}],
                options={"num_predict": 24, "temperature": 0},
                stream=True,
            )
            async for chunk in stream:  # an error line would raise ResponseError
                parts.append(chunk.message.content or "")
            return "".join(parts)

        try:
            return await asyncio.gather(*(ask(i) for i in range(4)))
        finally:
            await client.close()  # type: ignore[no-untyped-call]

    with gateway_in_thread(manifest) as running:
        answers = asyncio.run(ask_all(running.url))
    assert len(answers) == 4 and all(answer.strip() for answer in answers)


def test_a_json_request_vllm_mlx_cannot_honour_gets_its_reason_not_a_bare_500(
    tmp_path: Path, tiny_model: Path
) -> None:
    """vllm-mlx constrains JSON with llguidance, which cannot read the tiny model's
    word-level tokenizer: a schema is refused with its reason (FastAPI's ``detail``,
    not JSON inside a string), and the engine's bare 500 for ``json_object`` names
    the model and where the reason is."""
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(
        f'version = 1\n\n[models."strict"]\npath = "{tiny_model}"\nbackend = "vllm-mlx"\n',
        encoding="utf-8",
    )
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    hi = [{"role": "user", "content": "hi"}]
    with gateway_in_thread(manifest) as running, httpx.Client(timeout=120) as http:
        shaped = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
        refused = http.post(
            running.url + "/v1/chat/completions",
            json={"model": "strict", "messages": hi, "response_format": shaped, "max_tokens": 8},
        )
        assert refused.status_code == 422
        message = refused.json()["error"]["message"]
        assert message.startswith("response_format is unavailable: ")
        assert "tokenizer" in message and "detail" not in message
        native = http.post(
            running.url + "/api/chat",
            json={"model": "strict", "messages": hi, "format": "json", "stream": False},
        )
        assert native.status_code == 502
        error = native.json()["error"]
        assert "model 'strict' failed on this request" in error
        assert "mlx-lama logs strict" in error


def test_the_agents_apis_answer_from_vllm_mlx(tmp_path: Path, tiny_model: Path) -> None:
    """Claude Code's and Codex's APIs on the other engine: the same translation, with
    vllm-mlx's own stream (its usage and finish events) underneath."""
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(
        f'version = 1\n\n[models."agent"]\npath = "{tiny_model}"\nbackend = "vllm-mlx"\n',
        encoding="utf-8",
    )
    hi = [{"role": "user", "content": "hello there"}]
    with gateway_in_thread(manifest) as running:
        with anthropic.Anthropic(base_url=running.url, api_key="x", max_retries=0) as claude:
            with claude.messages.stream(model="agent", max_tokens=4, messages=hi) as stream:  # type: ignore[arg-type]
                kinds = [event.type for event in stream]
                message = stream.get_final_message()
            counted = claude.messages.count_tokens(model="agent", messages=hi)  # type: ignore[arg-type]
        assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
        assert message.content[0].type == "text" and message.content[0].text
        assert 0 < message.usage.output_tokens <= 4
        assert counted.input_tokens == message.usage.input_tokens > 0
        with openai.OpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0) as oai:
            response = oai.responses.create(model="agent", input="hello there", max_output_tokens=4)
        assert response.output_text
        assert response.usage is not None and response.usage.input_tokens > 0
