"""The embedding engine's server (``src/mlx_lama/backends/embedding_server.py``).

The real program, run by the Python of mlx-embeddings' own environment
(``mlx-lama install mlx-embeddings``), serves the tiny random BERT of
``tests/fixtures/tiny_embedding.py`` (32 floats a vector, a 64-token context),
and is spoken to over HTTP: with httpx, and with the openai client, which asks
for base64 vectors by default. One server serves the module.

Without that environment the module is skipped (the ``engine`` marker), or fails
under ``MLX_LAMA_REQUIRE_ENGINES`` (CI proves every engine).
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import shutil
import struct
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from tokenizers import Tokenizer

from mlx_lama.backends.base import get_backend
from mlx_lama.backends.mlx_embeddings import SERVER_PROGRAM
from tests.fixtures.servers import ServerProcess, free_port, running_server, start_server

pytestmark = [pytest.mark.server, pytest.mark.engine("mlx-embeddings")]

PROGRAM = SERVER_PROGRAM
NAME = "tiny-embed:latest"
SIZE = 32  # tests/fixtures/tiny_embedding.py: HIDDEN_SIZE
CONTEXT = 64  # and CONTEXT
LONG_TEXT = " ".join(["the cat sat on the mat"] * 17)  # 102 words, 104 tokens with [CLS] [SEP]


@pytest.fixture(scope="module")
def embedding_python() -> Path:
    """The mlx-embeddings environment's Python (the engine marker skips the module, or
    fails it under MLX_LAMA_REQUIRE_ENGINES, where there is none)."""
    python = get_backend("mlx-embeddings").environment_python()
    assert python is not None
    return Path(python)


def server_argv(python: Path, model: Path, port: int) -> list[str]:
    return [
        str(python), str(PROGRAM), "--model", str(model),
        "--host", "127.0.0.1", "--port", str(port), "--served-model-name", NAME,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def embedding_server(
    embedding_python: Path,
    tiny_embedding_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    port = free_port()
    log = tmp_path_factory.mktemp("embedding-server") / "server.log"
    argv = server_argv(embedding_python, tiny_embedding_model, port)
    with running_server(argv, port=port, log_path=log, ready_timeout=120) as server:
        yield server


@pytest.fixture(scope="module")
def client(embedding_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=embedding_server.url, trust_env=False, timeout=60) as http:
        yield http


def embed(client: httpx.Client, **body: Any) -> list[list[float]]:
    reply = client.post("/v1/embeddings", json=body)
    assert reply.status_code == 200, reply.text
    data = reply.json()["data"]
    assert [item["index"] for item in data] == list(range(len(data)))
    assert all(item["object"] == "embedding" for item in data)
    return [item["embedding"] for item in data]


def refused(client: httpx.Client, status: int, **body: Any) -> str:
    """The message of the OpenAI-shaped error the server answers ``body`` with."""
    reply = client.post("/v1/embeddings", json=body)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    return str(error["message"])


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def close(a: list[float], b: list[float], tolerance: float = 1e-5) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


def token_ids(model: Path, text: str) -> list[int]:
    """``text`` as the server tokenises it: ``[CLS] ... [SEP]``."""
    return Tokenizer.from_file(str(model / "tokenizer.json")).encode(text).ids


def test_one_string_is_one_unit_vector(client: httpx.Client) -> None:
    reply = client.post("/v1/embeddings", json={"model": NAME, "input": "hello world"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["object"] == "list"
    assert body["model"] == NAME
    assert body["usage"] == {"prompt_tokens": 4, "total_tokens": 4}  # [CLS] hello world [SEP]
    [item] = body["data"]
    assert item["index"] == 0
    assert len(item["embedding"]) == SIZE
    assert norm(item["embedding"]) == pytest.approx(1.0, abs=1e-5)


def test_a_batch_answers_in_order_and_alike_with_one_at_a_time(client: httpx.Client) -> None:
    texts = ["the cat", "a dog runs to the river in the morning", "hello", "the cat"]
    vectors = embed(client, input=texts)  # no model: any name is this one
    assert len(vectors) == 4
    assert all(len(v) == SIZE and norm(v) == pytest.approx(1.0, abs=1e-5) for v in vectors)
    assert close(vectors[0], vectors[3], 1e-6)  # same text, same vector
    assert not close(vectors[0], vectors[1], 1e-2)
    assert not close(vectors[1], vectors[2], 1e-2)
    for text, vector in zip(texts, vectors, strict=True):  # padding changes nothing
        assert close(embed(client, input=text)[0], vector)


def test_token_ids_embed_as_their_text(client: httpx.Client, tiny_embedding_model: Path) -> None:
    ids = token_ids(tiny_embedding_model, "hello world")
    assert ids[0] == 2 and ids[-1] == 3 and len(ids) == 4  # [CLS] hello world [SEP]
    [text] = embed(client, input="hello world")
    assert close(embed(client, input=ids)[0], text)
    other = token_ids(tiny_embedding_model, "the cat")
    both = client.post("/v1/embeddings", json={"input": [ids, other]}).json()
    assert both["usage"]["prompt_tokens"] == len(ids) + len(other)
    assert close(both["data"][0]["embedding"], text)
    assert close(both["data"][1]["embedding"], embed(client, input="the cat")[0])


def test_dimensions_cut_and_renormalise(client: httpx.Client) -> None:
    [full] = embed(client, input="good morning")
    [short] = embed(client, input="good morning", dimensions=8)
    assert len(short) == 8
    assert norm(short) == pytest.approx(1.0, abs=1e-6)
    head = full[:8]
    assert close(short, [x / norm(head) for x in head])
    assert close(embed(client, input="good morning", dimensions=SIZE)[0], full)
    message = refused(client, 400, input="good morning", dimensions=SIZE + 1)
    assert str(SIZE) in message


def test_too_long_is_refused_without_truncate(client: httpx.Client) -> None:
    message = refused(client, 400, input=["hello", LONG_TEXT], truncate=False)
    assert "input 1 has 104 tokens" in message
    assert f"context length of {CONTEXT}" in message
    assert '"truncate": true' in message
    message = refused(client, 400, input=list(range(5, 5 + CONTEXT + 1)), truncate=False)
    assert f"input 0 has {CONTEXT + 1} tokens" in message
    # at the context exactly, it is embedded
    assert len(embed(client, input=list(range(5, 5 + CONTEXT)), truncate=False)) == 1


def test_too_long_is_cut_to_the_context_by_default(client: httpx.Client) -> None:
    reply = client.post("/v1/embeddings", json={"input": [LONG_TEXT, "hello"]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["prompt_tokens"] == CONTEXT + 3
    cut = reply.json()["data"][0]["embedding"]
    assert close(embed(client, input=LONG_TEXT, truncate=True)[0], cut)
    ids = list(range(5, 5 + 2 * CONTEXT))
    reply = client.post("/v1/embeddings", json={"input": ids})
    assert reply.json()["usage"]["prompt_tokens"] == CONTEXT
    assert close(reply.json()["data"][0]["embedding"], embed(client, input=ids[:CONTEXT])[0])


def test_another_model_is_not_found(client: httpx.Client) -> None:
    message = refused(client, 404, model="other:latest", input="hello")
    assert "'other:latest'" in message and repr(NAME) in message


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"input": []}, "input must be"),
        ({"input": ""}, "empty string"),
        ({"input": ["hello", ""]}, "empty string"),
        ({"input": 42}, "input must be"),
        ({"input": ["hello", 5]}, "input must be"),
        ({"input": [[5, 6], []]}, "input must be"),
        ({"input": [-1]}, "input must be"),
        ({"input": [10**6]}, "vocabulary size"),
        ({}, "input must be"),
        ({"input": "hi", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "hi", "dimensions": 0}, "dimensions"),
        ({"input": "hi", "truncate": "no"}, "truncate"),
        (["hello"], "JSON object"),
    ],
)
def test_bad_requests_are_400s(client: httpx.Client, body: Any, words: str) -> None:
    reply = client.post("/v1/embeddings", content=json.dumps(body))
    assert reply.status_code == 400, reply.text
    assert words in reply.json()["error"]["message"]


def test_unknown_keys_are_ignored(client: httpx.Client) -> None:
    assert len(embed(client, input="hello", user="someone", options={"x": 1})[0]) == SIZE


def test_bad_json_unknown_paths_and_the_model_list(client: httpx.Client) -> None:
    reply = client.post("/v1/embeddings", content=b"{not json")
    assert reply.status_code == 400
    assert "not valid JSON" in reply.json()["error"]["message"]
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/v1/models").json() == {
        "object": "list",
        "data": [{"id": NAME, "object": "model", "owned_by": "mlx-lama"}],
    }
    for reply in (client.get("/v1/nowhere"), client.post("/v1/chat/completions", json={})):
        assert reply.status_code == 404
        assert "no such path" in reply.json()["error"]["message"]


def test_one_connection_carries_many_requests(embedding_server: ServerProcess) -> None:
    """Keep-alive: each answer has its length, and a refused body is read in full."""
    connection = http.client.HTTPConnection("127.0.0.1", embedding_server.port, timeout=60)
    try:
        for path, body, status in [
            ("/v1/embeddings", {"input": "hello"}, 200),
            ("/v1/nowhere", {"input": "hello" * 1000}, 404),
            ("/v1/embeddings", {"input": ""}, 400),
            ("/v1/embeddings", {"input": ["the cat", "a dog"]}, 200),
        ]:
            connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            reply = connection.getresponse()
            assert reply.status == status
            assert reply.getheader("Content-Length") is not None
            json.loads(reply.read())
    finally:
        connection.close()


def test_requests_at_once_all_get_their_own_vectors(client: httpx.Client) -> None:
    texts = ["the cat", "a dog", "hello world", "good night", "blue sky", "red apple"] * 2
    expected = embed(client, input=texts)
    with ThreadPoolExecutor(len(texts)) as pool:
        answers = list(pool.map(lambda text: embed(client, input=text)[0], texts))
    assert all(close(a, e) for a, e in zip(answers, expected, strict=True))


def test_the_openai_client_gets_base64_vectors(embedding_server: ServerProcess) -> None:
    with openai.OpenAI(
        base_url=embedding_server.url + "/v1", api_key="x", max_retries=0, timeout=60
    ) as oai:
        [model] = oai.models.list().data
        assert model.id == NAME
        made = oai.embeddings.create(model=NAME, input=["hello world", "the cat"])
        floats = oai.embeddings.create(
            model=NAME, input=["hello world", "the cat"], encoding_format="float"
        )
        short = oai.embeddings.create(model=NAME, input="hello world", dimensions=8)
    assert [d.index for d in made.data] == [0, 1]
    assert made.model == NAME
    assert made.usage.prompt_tokens == 8
    for got, want in zip(made.data, floats.data, strict=True):
        assert len(got.embedding) == SIZE
        assert close(got.embedding, want.embedding, 1e-7)  # float32 either way
    assert len(short.data[0].embedding) == 8
    assert norm(short.data[0].embedding) == pytest.approx(1.0, abs=1e-6)


def test_base64_is_little_endian_float32(client: httpx.Client) -> None:
    [as_floats] = embed(client, input="hello world")
    [as_base64] = embed(client, input="hello world", encoding_format="base64")
    assert isinstance(as_base64, str)
    decoded = list(struct.unpack(f"<{SIZE}f", base64.b64decode(as_base64)))
    assert decoded == as_floats


def test_sigterm_stops_it_with_status_0(
    embedding_python: Path, tiny_embedding_model: Path, tmp_path: Path
) -> None:
    port = free_port()
    argv = server_argv(embedding_python, tiny_embedding_model, port)
    server = start_server(argv, port=port, log_path=tmp_path / "server.log")
    try:
        server.wait_ready(timeout=120)
        server.process.terminate()
        assert server.process.wait(timeout=15) == 0, server.log_tail()
        assert f"mlx-lama embedding server: {NAME} on http://127.0.0.1:{port}" in server.log_tail()
    finally:
        server.stop()


def test_an_unsupported_model_type_exits_with_status_1(
    embedding_python: Path, tiny_embedding_model: Path, tmp_path: Path
) -> None:
    """Through runpy, as mlx-lama launches it (``interpreters.engine_script``)."""
    model = tmp_path / "odd-model"
    shutil.copytree(tiny_embedding_model, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "nosuchmodel"}))
    run_it = f"import runpy; runpy.run_path({str(PROGRAM)!r}, run_name='__main__')"
    done = subprocess.run(
        [str(embedding_python), "-c", run_it, "--model", str(model), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1, done.stderr
    assert f"mlx-lama embedding server: cannot serve {model} on 127.0.0.1:" in done.stderr
    assert "nosuchmodel not supported" in done.stderr
    assert "Traceback" not in done.stderr
