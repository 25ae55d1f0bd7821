"""Embedding models through the gateway, with the clients RAG tools use: the ``ollama``
client's ``embed``/``embeddings`` and the ``openai`` client's ``embeddings.create``,
against ``mlx-lama serve`` (a real subprocess) that starts a real embedding server
(mlx-embeddings, in its own environment) for a tiny random BERT on demand, beside a
chat model on mlx-lm.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from tests.fixtures import hf_env
from tests.fixtures.gateway import RunningGateway, isolated_gateway_process

pytestmark = [
    pytest.mark.server,
    pytest.mark.engine("mlx-embeddings"),
    pytest.mark.xdist_group("embeddings"),
]

MANIFEST = """\
version = 1

[server]
keep_alive = "10m"

[aliases]
"text-embedding-3-small" = "minilm"   # what OpenAI-first tools ask for

[models."minilm"]
path = "{embedder}"
kind = "embedding"

[models."tiny"]
path = "{chat}"
"""

WIDTH = 32  # the tiny BERT's hidden size
CONTEXT = 64  # its max_position_embeddings


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tiny_embedding_model: Path
) -> Iterator[RunningGateway]:
    root = tmp_path_factory.mktemp("gateway-embeddings")
    text = MANIFEST.format(embedder=tiny_embedding_model, chat=tiny_model)
    with isolated_gateway_process(root, text) as gateway:
        yield gateway


@pytest.fixture
def client(served: RunningGateway) -> Iterator[ollama.Client]:
    with ollama.Client(host=served.url) as ollama_client:
        yield ollama_client


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def test_ollama_embed_answers_one_unit_vector_per_input(client: ollama.Client) -> None:
    answer = client.embed(model="minilm", input=["red apples", "green pears", "red apples"])
    vectors = [list(v) for v in answer.embeddings]
    assert [len(v) for v in vectors] == [WIDTH] * 3
    assert all(abs(norm(v) - 1.0) < 1e-4 for v in vectors)
    assert vectors[0] == pytest.approx(vectors[2], abs=1e-5)  # the same text, the same vector
    assert vectors[0] != pytest.approx(vectors[1], abs=1e-3)
    assert answer.model == "minilm"
    assert answer.prompt_eval_count is not None and answer.prompt_eval_count > 0


def test_ollama_embed_matches_openai_embeddings(
    client: ollama.Client, served: RunningGateway
) -> None:
    ours = list(client.embed(model="minilm", input="a quiet lake").embeddings[0])
    with openai.OpenAI(base_url=f"{served.url}/v1", api_key="local", max_retries=0) as sdk:
        # the SDK asks for base64 unless told otherwise, and decodes it
        theirs = sdk.embeddings.create(model="text-embedding-3-small", input=["a quiet lake"])
        floats = sdk.embeddings.create(
            model="minilm", input="a quiet lake", encoding_format="float"
        )
    assert theirs.data[0].embedding == pytest.approx(ours, abs=1e-5)
    assert floats.data[0].embedding == pytest.approx(ours, abs=1e-5)
    assert theirs.usage.prompt_tokens > 0
    assert theirs.model == "text-embedding-3-small"


def test_legacy_embeddings_route_answers_one_vector(client: ollama.Client) -> None:
    answer = client.embeddings(model="minilm", prompt="a quiet lake")
    embed = client.embed(model="minilm", input="a quiet lake")
    assert list(answer.embedding) == pytest.approx(list(embed.embeddings[0]), abs=1e-5)


def test_dimensions_cut_and_renormalise(client: ollama.Client, served: RunningGateway) -> None:
    full = list(client.embed(model="minilm", input="a quiet lake").embeddings[0])
    short = list(client.embed(model="minilm", input="a quiet lake", dimensions=8).embeddings[0])
    assert len(short) == 8 and abs(norm(short) - 1.0) < 1e-4
    head = norm(full[:8])
    assert short == pytest.approx([x / head for x in full[:8]], abs=1e-4)
    reply = httpx.post(
        f"{served.url}/v1/embeddings",
        json={"model": "minilm", "input": "lake", "dimensions": WIDTH + 1},
        timeout=60,
    )
    assert reply.status_code == 400
    assert str(WIDTH) in reply.json()["error"]["message"]


def test_truncate_false_refuses_a_text_longer_than_the_context(
    client: ollama.Client, served: RunningGateway
) -> None:
    long_text = " ".join(["lake"] * (CONTEXT * 2))
    cut = client.embed(model="minilm", input=long_text)  # truncate defaults to true
    assert len(cut.embeddings[0]) == WIDTH
    assert cut.prompt_eval_count == CONTEXT
    with pytest.raises(ollama.ResponseError) as refused:
        client.embed(model="minilm", input=long_text, truncate=False)
    assert refused.value.status_code == 400
    assert "context" in refused.value.error and str(CONTEXT) in refused.value.error
    bad = httpx.post(
        f"{served.url}/api/embed",
        json={"model": "minilm", "input": "lake", "truncate": "no"},
        timeout=60,
    )
    assert bad.status_code == 400 and "truncate" in bad.json()["error"]


def test_a_chat_request_to_an_embedding_model_is_a_400(
    client: ollama.Client, served: RunningGateway
) -> None:
    with pytest.raises(ollama.ResponseError) as refused:
        client.chat(model="minilm", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 400
    assert refused.value.error.startswith('"minilm" does not support chat')
    assert "embedding model" in refused.value.error
    reply = httpx.post(
        f"{served.url}/v1/chat/completions",
        json={"model": "minilm", "messages": [{"role": "user", "content": "hi"}]},
        timeout=60,
    )
    assert reply.status_code == 400 and "/v1/embeddings" in reply.json()["error"]["message"]


def test_embeddings_from_a_chat_model_are_a_400_that_says_how(
    client: ollama.Client, served: RunningGateway
) -> None:
    with pytest.raises(ollama.ResponseError) as refused:
        client.embed(model="tiny", input="hello")
    assert refused.value.status_code == 400
    assert refused.value.error.startswith('"tiny" does not support embeddings')
    assert 'kind = "embedding"' in refused.value.error
    reply = httpx.post(
        f"{served.url}/v1/embeddings", json={"model": "tiny", "input": "hello"}, timeout=60
    )
    assert reply.status_code == 400 and "text model" in reply.json()["error"]["message"]


def test_show_and_ps_know_the_embedding_model(
    client: ollama.Client, served: RunningGateway
) -> None:
    client.embed(model="minilm", input="load it")
    shown = client.show("minilm")
    assert shown.capabilities == ["embedding"]
    assert shown.modelinfo is not None and shown.modelinfo.get("bert.embedding_length") == WIDTH
    running = {m.model for m in client.ps().models}
    assert "minilm:latest" in running or "minilm" in running
    listed = httpx.get(f"{served.url}/v1/models", timeout=30).json()
    assert "minilm:latest" in {m["id"] for m in listed["data"]}


def run_cli(served: RunningGateway, *args: str) -> subprocess.CompletedProcess[str]:
    """``mlx-lama ARGS`` on the gateway's manifest, in its environment (so it finds it)."""
    root = served.home.parent
    env = {**hf_env.isolated_copy(root), "MLX_LAMA_MANIFEST": str(root / "mlxlama.toml")}
    return subprocess.run(
        [sys.executable, "-m", "mlx_lama", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_run_prints_the_vector_of_its_text(client: ollama.Client, served: RunningGateway) -> None:
    """As ``ollama run`` does for an embedding model; it has no chat to open."""
    done = run_cli(served, "run", "minilm", "a quiet lake")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    expected = list(client.embed(model="minilm", input="a quiet lake").embeddings[0])
    assert printed == pytest.approx(expected, abs=1e-5)
    chat = run_cli(served, "run", "minilm")
    assert chat.returncode == 1
    assert "embedding model" in chat.stderr and "mlx-lama run minilm 'some text'" in chat.stderr
