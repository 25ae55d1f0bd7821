"""The official ``ollama`` and ``openai`` clients against ``mlx-lama serve`` (a real
subprocess) serving the tiny model through a real ``mlx_lm.server``.

One gateway for the module: the model server it starts on demand is shared by
the tests (each start costs seconds), so tests here only read or chat.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import ollama
import openai
import psutil
import pytest

from tests.fixtures.gateway import (
    RunningGateway,
    isolated_gateway_process,
    wait_for,
)

pytestmark = pytest.mark.server

MANIFEST = """\
version = 1

[server]
keep_alive = "10m"

[aliases]
"chat" = "tiny"   # a second name, like `ollama cp`

[models."tiny"]
path = "{model}"
system = "You are terse."

[models."tiny".parameters]
num_predict = 8
temperature = 0.0

[models."resting"]
path = "{model}"
serve = "never"
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[RunningGateway]:
    root = tmp_path_factory.mktemp("gateway-clients")
    with isolated_gateway_process(root, MANIFEST.format(model=tiny_model)) as gateway:
        yield gateway


@pytest.fixture
def client(served: RunningGateway) -> Iterator[ollama.Client]:
    with ollama.Client(host=served.url) as ollama_client:
        yield ollama_client


def test_list_shows_every_model_and_alias(client: ollama.Client) -> None:
    models = {m.model: m for m in client.list().models}
    assert set(models) == {"tiny:latest", "chat:latest", "resting:latest"}
    tiny = models["tiny:latest"]
    assert tiny.size is not None and tiny.size > 0
    assert tiny.details is not None and tiny.details.family == "llama"
    assert models["chat:latest"].digest is not None


def test_show_reports_details_and_modelfile(client: ollama.Client) -> None:
    shown = client.show("tiny")
    assert shown.modelinfo is not None and shown.modelinfo["general.architecture"] == "llama"
    assert shown.details is not None and shown.details.family == "llama"
    assert shown.modelfile is not None and "FROM " in shown.modelfile
    assert "You are terse." in shown.modelfile
    assert shown.capabilities is not None and "completion" in shown.capabilities
    assert shown.parameters is not None and "temperature" in shown.parameters


def test_unknown_model_is_a_404_response_error(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.show("no-such-model")
    assert caught.value.status_code == 404
    assert "no-such-model" in caught.value.error
    with pytest.raises(ollama.ResponseError) as chat_error:
        client.chat("no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert chat_error.value.status_code == 404


def test_chat_without_streaming(client: ollama.Client) -> None:
    answer = client.chat("tiny", messages=[{"role": "user", "content": "hello there"}])
    assert answer.done is True
    assert answer.message.role == "assistant"
    assert isinstance(answer.message.content, str) and answer.message.content
    assert answer.done_reason in ("stop", "length")
    assert answer.eval_count is not None and 0 < answer.eval_count <= 8  # num_predict = 8
    assert answer.total_duration is not None and answer.total_duration > 0


def test_chat_streams_ndjson_with_final_stats(client: ollama.Client) -> None:
    parts = list(client.chat("chat", messages=[{"role": "user", "content": "hello"}], stream=True))
    assert len(parts) >= 2
    assert all(p.message.role == "assistant" for p in parts)
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    final = parts[-1]
    assert final.model == "chat"  # the name the client used, not the backend's
    assert final.eval_count == len(parts) - 1
    assert "".join(p.message.content or "" for p in parts)


def test_each_answered_request_has_a_line_in_the_daemon_log(
    served: RunningGateway, client: ollama.Client
) -> None:
    client.chat("chat", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 2})
    process = served.process
    assert process is not None
    wait_for(lambda: "/api/chat tiny 200 " in process.log_tail(), 10, "the log line")
    lines = process.log_tail().splitlines()
    line = next(line for line in reversed(lines) if "/api/chat tiny 200" in line)
    assert re.search(r"/api/chat tiny 200 \d+\.\d{3}s tokens \d+\+2$", line), line


def test_json_output_from_an_engine_that_cannot_constrain_it_is_a_400(
    served: RunningGateway, client: ollama.Client
) -> None:
    """Not free text with a 200 that a JSON parser then fails on (langchain's
    with_structured_output): mlx-lm has no constrained decoding, and the 400 says
    which engine has."""
    hi = [{"role": "user", "content": "hi"}]
    for fmt in ("json", {"type": "object", "properties": {"a": {"type": "string"}}}):
        with pytest.raises(ollama.ResponseError) as refused:
            client.chat("tiny", messages=hi, format=fmt)
        assert refused.value.status_code == 400
        assert "runs on mlx-lm" in str(refused.value) and 'backend = "vllm-mlx"' in str(
            refused.value
        )
        assert "(format)" in str(refused.value)
    with openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0) as oai:
        with pytest.raises(openai.BadRequestError) as bad:
            oai.chat.completions.create(
                model="chat", messages=hi, response_format={"type": "json_object"}, max_tokens=2
            )  # type: ignore[call-overload]
        assert "(response_format)" in str(bad.value)
        plain = oai.chat.completions.create(
            model="chat", messages=hi, response_format={"type": "text"}, max_tokens=2
        )  # type: ignore[call-overload]
        assert plain.choices[0].message.content is not None  # plain text still answers


def test_generate_with_and_without_streaming(client: ollama.Client) -> None:
    whole = client.generate("tiny", "once upon a time", options={"num_predict": 4})
    assert whole.done and whole.response
    assert whole.eval_count is not None and whole.eval_count <= 4
    parts = list(client.generate("tiny", "once upon", stream=True, options={"num_predict": 3}))
    assert parts[-1].done and parts[-1].done_reason in ("stop", "length")
    assert "".join(p.response or "" for p in parts)


def test_ps_lists_the_loaded_model_with_its_expiry(client: ollama.Client) -> None:
    client.generate("tiny", "x", options={"num_predict": 1})
    loaded = {m.model: m for m in client.ps().models}
    assert "tiny:latest" in loaded
    expires = loaded["tiny:latest"].expires_at
    assert expires is not None and expires > datetime.now(UTC)
    assert loaded["tiny:latest"].size is not None and loaded["tiny:latest"].size > 0


def test_never_served_model_is_refused_with_the_fix(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat("resting", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 400
    assert 'serve = "on-demand"' in caught.value.error


def test_openai_client_streams_chat_and_lists_models(served: RunningGateway) -> None:
    with openai.OpenAI(base_url=served.url + "/v1", api_key="unused") as oai:
        ids = {m.id for m in oai.models.list()}
        assert {"tiny:latest", "chat:latest"} <= ids
        stream = oai.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=5,
            stream=True,
        )
        chunks = list(stream)
        assert chunks and all(c.model == "chat" for c in chunks)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text
        with pytest.raises(openai.NotFoundError):
            oai.chat.completions.create(
                model="missing", messages=[{"role": "user", "content": "hi"}]
            )


def test_the_manifest_system_prompt_applies_on_the_openai_api_as_on_ollamas(
    served: RunningGateway, client: ollama.Client
) -> None:
    """Ollama applies SYSTEM on both APIs: the same "hi" counts the same prompt tokens;
    a request's own system message (or developer, OpenAI's newer name) replaces it."""
    hi = [{"role": "user", "content": "hi"}]
    on_ollama = client.chat("tiny", messages=hi, options={"num_predict": 1})
    with openai.OpenAI(base_url=served.url + "/v1", api_key="unused") as oai:

        def prompt_tokens(messages: list[dict[str, str]]) -> int:
            answer = oai.chat.completions.create(model="tiny", messages=messages, max_tokens=1)  # type: ignore[arg-type]
            assert answer.usage is not None
            return answer.usage.prompt_tokens

        on_openai = prompt_tokens(hi)
        own = prompt_tokens([{"role": "system", "content": "x"}, *hi])
        developer = prompt_tokens([{"role": "developer", "content": "x"}, *hi])
    assert on_openai == on_ollama.prompt_eval_count
    assert own < on_openai and developer < on_openai  # "x" instead of "You are terse."


def _backend_connections(pid: int, port: int) -> int:
    return sum(
        1
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


def test_client_disconnect_cancels_the_backend_request(
    served: RunningGateway, client: ollama.Client
) -> None:
    client.generate("tiny", "warm", options={"num_predict": 1})  # loaded, whatever ran before
    pid = served.pid_of("tiny")
    port = int(served.health()["models"]["tiny"]["port"])  # type: ignore[index]
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "go"}],
        "options": {"num_predict": 200000},  # minutes of tokens if nothing cancels it
    }
    with (
        httpx.Client(trust_env=False, timeout=60) as http,
        http.stream("POST", served.url + "/api/chat", json=body) as response,
    ):
        lines = response.iter_lines()
        assert '"done":false' in next(lines)
        assert _backend_connections(pid, port) == 1
    # The gateway dropped its upstream request; the engine stopped writing and closed it.
    wait_for(lambda: _backend_connections(pid, port) == 0, 30, "the backend request to end")
    wait_for(lambda: served.health()["models"]["tiny"]["in_flight"] == 0, 10, "lease release")  # type: ignore[index]
    # Counted as a client that left (499), not as an answer that was given (200).
    with httpx.Client(trust_env=False, timeout=10) as http:
        last = http.get(served.url + "/mlx-lama/stats").json()["recent"][0]  # newest first
    assert (last["endpoint"], last["status"]) == ("/api/chat", 499)


def test_backend_death_mid_stream_ends_with_an_error_line(
    served: RunningGateway, client: ollama.Client
) -> None:
    client.generate("tiny", "warm", options={"num_predict": 1})
    pid = served.pid_of("tiny")
    stream = client.chat(
        "tiny",
        messages=[{"role": "user", "content": "go"}],
        options={"num_predict": 200000},
        stream=True,
    )
    assert next(stream).done is False
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ollama.ResponseError) as caught:
        for _part in stream:
            pass
    assert "model server" in caught.value.error
    # The next request finds the server gone and starts a fresh one.
    answer = client.chat("tiny", messages=[{"role": "user", "content": "again"}])
    assert answer.done and answer.message.content
    assert served.pid_of("tiny") != pid


def test_create_writes_a_manifest_model_that_answers_at_once(
    served: RunningGateway, client: ollama.Client
) -> None:
    """Open WebUI's "Create a model" and ollama.Client.create: from, system, parameters
    and messages become a manifest entry, as `mlx-lama create` writes one."""
    manifest = served.home.parent / "mlxlama.toml"
    try:
        done = client.create(
            model="brief",
            from_="tiny",
            system='Answer in one word, "yes" or no.',
            parameters={"num_predict": 3, "stop": ["<|end|>", "###"]},
            messages=[
                {"role": "user", "content": "ready?"},
                {"role": "assistant", "content": "yes"},
            ],
        )
        assert done.status == "success"
        text = manifest.read_text(encoding="utf-8")
        assert '[models."brief"]' in text and "Answer in one word" in text
        answer = client.chat("brief", messages=[{"role": "user", "content": "hi"}])
        assert answer.eval_count == 3  # the new model's own num_predict
        assert 'Answer in one word, "yes" or no.' in (client.show("brief").modelfile or "")
        for refused in ({"files": {"a.gguf": "sha256:00"}}, {"quantize": "q4_K_M"}, {}):
            body = {"model": "other", **refused}
            if refused:
                body["from"] = "tiny"
            reply = httpx.post(served.url + "/api/create", json=body, timeout=30)
            assert reply.status_code == 400, reply.text
        bad = httpx.post(
            served.url + "/api/create",
            json={"model": "other", "from": "tiny", "parameters": {"temprature": 1}},
            timeout=30,
        )
        assert bad.status_code == 400 and "temprature" in bad.json()["error"]
        assert "other" not in manifest.read_text(encoding="utf-8")
    finally:
        client.delete("brief")
