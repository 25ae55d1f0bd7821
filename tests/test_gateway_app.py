"""The gateway app over real HTTP (uvicorn in a thread): safe defaults, error shapes,
information routes, and pull / copy / delete as manifest edits with the real
``ollama`` client against the Hub stand-in. No model server is started here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from mlx_lama.schema import load_manifest
from mlx_lama.schema.lockfile import read_lock
from tests.conftest import TINY_REPO_ID, PublishedRepo
from tests.fixtures.gateway import RunningGateway, gateway_in_thread

MANIFEST = """\
# my models
version = 1

[server]
keep_alive = "5m"   # idle unload

[models."local"]
path = "{model}"
"""


@pytest.fixture
def manifest(tmp_path: Path, tiny_model: Path) -> Path:
    path = tmp_path / "mlxlama.toml"
    path.write_text(MANIFEST.format(model=tiny_model), encoding="utf-8")
    return path


@pytest.fixture
def gateway(manifest: Path) -> Iterator[RunningGateway]:
    with gateway_in_thread(manifest) as running:
        yield running


@pytest.fixture
def http(gateway: RunningGateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, trust_env=False, timeout=30) as client:
        yield client


def test_liveness_and_version(http: httpx.Client) -> None:
    root = http.get("/")
    assert root.status_code == 200 and root.text == "Ollama is running"
    assert http.head("/").status_code == 200
    version = http.get("/api/version").json()
    assert version["version"].count(".") == 2 and "mlx_lama" in version


def test_foreign_host_header_is_refused(http: httpx.Client) -> None:
    assert http.get("/api/tags", headers={"Host": "evil.example"}).status_code == 403
    assert http.get("/api/tags", headers={"Host": "localhost"}).status_code == 200


def test_oversized_body_is_refused_with_413(http: httpx.Client) -> None:
    body = b'{"model": "local", "prompt": "' + b"x" * (20 * 2**20) + b'"}'
    response = http.post("/api/generate", content=body)
    assert response.status_code == 413
    assert "error" in response.json()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "invalid JSON"),
        (b"", "missing request body"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"model": "local", "prompt": "x", "options": {"temperature": NaN}}', "invalid JSON"),
    ],
)
def test_malformed_bodies_get_400_with_an_error_object(
    http: httpx.Client, body: bytes, message: str
) -> None:
    response = http.post("/api/generate", content=body)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_bad_sampling_values_are_refused_before_any_model_starts(
    http: httpx.Client, gateway: RunningGateway
) -> None:
    response = http.post(
        "/api/generate",
        json={"model": "local", "prompt": "x", "options": {"temperature": -1}},
    )
    assert response.status_code == 400
    assert "temperature" in response.json()["error"]
    openai_style = http.post(
        "/v1/chat/completions",
        json={"model": "local", "messages": [], "max_tokens": 0},
    )
    assert openai_style.status_code == 400
    assert openai_style.json()["error"]["type"] == "invalid_request_error"
    assert gateway.health()["models"] == {
        "local": {"state": "stopped", "serve": "on-demand", "in_flight": 0, "backend": "mlx-lm"}
    }


def test_unknown_routes_methods_and_models(http: httpx.Client) -> None:
    assert http.get("/api/chat").status_code == 405
    assert http.get("/api/nothing").status_code == 404
    missing = http.post("/v1/chat/completions", json={"model": "nope", "messages": []})
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    bad = http.post("/api/show", json={"model": "../../etc/passwd"})
    assert bad.status_code == 400
    assert "/etc" not in bad.json()["error"].replace("../../etc/passwd", "")


def test_metrics_count_requests_in_prometheus_text(http: httpx.Client) -> None:
    http.post("/api/show", json={"model": "local"})
    metrics = http.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "# TYPE mlx_lama_requests_total counter" in metrics.text
    assert "mlx_lama_loaded_models 0" in metrics.text


def test_pull_copy_delete_with_the_ollama_client(
    published_model: PublishedRepo, gateway: RunningGateway, manifest: Path
) -> None:
    with ollama.Client(host=gateway.url) as client:
        progress = list(client.pull(TINY_REPO_ID, stream=True))
        statuses = [p.status for p in progress]
        assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
        sized = [p for p in progress if p.total]
        assert sized and sized[-1].completed == sized[-1].total
        assert sized[-1].digest is not None and sized[-1].digest.startswith("sha256:")

        text = manifest.read_text(encoding="utf-8")
        assert text.startswith("# my models\n")  # the user's comments survive
        assert 'keep_alive = "5m"   # idle unload' in text
        assert load_manifest(manifest).models[TINY_REPO_ID].repo == TINY_REPO_ID
        locked = read_lock(manifest.with_name("mlxlama.lock")).get(TINY_REPO_ID)
        assert locked is not None and locked.commit == published_model.commit
        names = {m.model for m in client.list().models}
        assert f"{TINY_REPO_ID}:latest" in names

        assert client.copy(TINY_REPO_ID, "tiny-copy").status == "success"
        assert load_manifest(manifest).aliases == {"tiny-copy": TINY_REPO_ID}
        assert "tiny-copy:latest" in {m.model for m in client.list().models}
        assert client.show("tiny-copy").modelinfo is not None

        assert client.delete("tiny-copy").status == "success"
        assert load_manifest(manifest).aliases == {}
        assert client.delete(TINY_REPO_ID).status == "success"
        assert TINY_REPO_ID not in load_manifest(manifest).models
        assert {m.model for m in client.list().models} == {"local:latest"}
        cache = Path(gateway.gateway.cache_dir) if gateway.gateway else None
        assert cache is not None
        assert not (cache / "models--mlx-test--tiny-llama").exists()  # pulled by us: freed

        with pytest.raises(ollama.ResponseError) as missing:
            client.delete(TINY_REPO_ID)
        assert missing.value.status_code == 404


def test_pull_of_an_unknown_name_is_a_404(gateway: RunningGateway) -> None:
    with ollama.Client(host=gateway.url) as client, pytest.raises(ollama.ResponseError) as caught:
        client.pull("no-such-model-anywhere")
    assert caught.value.status_code == 404


def test_pull_of_a_missing_repo_streams_an_error(
    published_model: PublishedRepo, gateway: RunningGateway, manifest: Path
) -> None:
    before = manifest.read_text(encoding="utf-8")
    with ollama.Client(host=gateway.url) as client, pytest.raises(ollama.ResponseError) as caught:
        list(client.pull("mlx-test/not-there", stream=True))
    assert "not-there" in caught.value.error
    assert manifest.read_text(encoding="utf-8") == before  # nothing half-added


def test_api_key_is_required_when_configured(tmp_path: Path, tiny_model: Path) -> None:
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(
        MANIFEST.format(model=tiny_model).replace(
            'keep_alive = "5m"   # idle unload', 'api_key = "sekret"'
        ),
        encoding="utf-8",
    )
    with gateway_in_thread(manifest) as running:
        with (
            ollama.Client(host=running.url) as anonymous,
            pytest.raises(ollama.ResponseError) as caught,
        ):
            anonymous.list()
        assert caught.value.status_code == 401
        with ollama.Client(host=running.url, headers={"Authorization": "Bearer sekret"}) as keyed:
            assert [m.model for m in keyed.list().models] == ["local:latest"]
        assert (
            httpx.get(running.url + "/", trust_env=False).status_code == 200
        )  # liveness stays open


def test_embeddings_on_an_engine_without_them_get_ollamas_capability_error(
    http: httpx.Client,
) -> None:
    ollama_style = http.post("/api/embed", json={"model": "local", "input": "text"})
    assert ollama_style.status_code == 400
    error = ollama_style.json()["error"]
    assert error.startswith('"local" does not support embeddings: it is a text model')
    assert 'kind = "embedding"' in error
    openai_style = http.post("/v1/embeddings", json={"model": "local", "input": "text"})
    assert openai_style.status_code == 400
    assert "does not support embeddings" in openai_style.json()["error"]["message"]
