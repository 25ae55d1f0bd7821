"""On-demand models through the real gateway: started by their first request, stopped
after keep_alive, evicted to keep ``max_loaded``, loaded and unloaded by empty requests.

Each model start is a real ``mlx_lm.server`` process on the tiny model.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import ollama
import psutil
import pytest

from tests.fixtures.gateway import RunningGateway, gateway_in_thread, wait_for

pytestmark = pytest.mark.server

MANIFEST = """\
version = 1

[server]
keep_alive = "2s"
max_loaded = 1

[models."first"]
path = "{model}"

[models."second"]
path = "{model}"
keep_alive = "10m"
"""


@pytest.fixture
def gateway(tmp_path: Path, tiny_model: Path) -> Iterator[RunningGateway]:
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(MANIFEST.format(model=tiny_model), encoding="utf-8")
    with gateway_in_thread(manifest) as running:
        yield running


def _loaded(client: ollama.Client) -> list[str]:
    return sorted(m.model or "" for m in client.ps().models)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_first_request_starts_a_model_and_keep_alive_stops_it(gateway: RunningGateway) -> None:
    with ollama.Client(host=gateway.url) as client:
        assert _loaded(client) == []
        answer = client.generate("first", "hello", options={"num_predict": 2})
        assert answer.done
        assert answer.load_duration is not None and answer.load_duration > 0  # waited for the start
        pid = gateway.pid_of("first")
        assert _loaded(client) == ["first:latest"]
        again = client.generate("first", "hello", options={"num_predict": 2})
        assert gateway.pid_of("first") == pid  # reused, not restarted
        assert (again.load_duration or 0) < answer.load_duration
        # keep_alive = "2s" under [server]: idle for two seconds, then stopped.
        wait_for(lambda: _loaded(client) == [], 30, "the idle model to be unloaded")
        wait_for(lambda: not _alive(pid), 30, "its server process to exit")
        record = gateway.home / "run" / "first.json"
        wait_for(lambda: not record.exists(), 10, "its run record to be deleted")


def test_max_loaded_evicts_the_idle_model_and_empty_requests_load_and_unload(
    gateway: RunningGateway,
) -> None:
    with ollama.Client(host=gateway.url) as client:
        loaded = client.generate("second")  # an empty prompt only loads
        assert loaded.done_reason == "load"
        second_pid = gateway.pid_of("second")
        assert _loaded(client) == ["second:latest"]

        client.chat(
            "first", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 1}
        )
        # max_loaded = 1: the idle "second" made room for "first".
        assert _loaded(client) == ["first:latest"]
        wait_for(lambda: not _alive(second_pid), 30, "the evicted server to exit")

        unloaded = client.chat("first", messages=[], keep_alive=0)
        assert unloaded.done_reason == "unload"
        assert unloaded.message.role == "assistant"
        assert _loaded(client) == []


def _chat_body(model: str) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
        "options": {"num_predict": 2},
    }


def test_concurrent_requests_share_one_start_and_a_full_queue_answers_503(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(MANIFEST.format(model=tiny_model), encoding="utf-8")
    monkeypatch.setenv("MLX_LAMA_MAX_QUEUE", "2")
    with (
        gateway_in_thread(manifest) as running,
        httpx.Client(base_url=running.url, trust_env=False, timeout=120) as http,
        ThreadPoolExecutor(2) as pool,
    ):
        waiting = [pool.submit(http.post, "/api/chat", json=_chat_body("first")) for _ in range(2)]
        wait_for(
            lambda: running.health()["models"]["first"]["state"] == "starting",  # type: ignore[index]
            30,
            "the start to begin",
        )
        refused = http.post("/api/chat", json=_chat_body("first"))
        assert refused.status_code == 503
        assert "waiting for models to load" in refused.json()["error"]
        answers = [future.result() for future in waiting]
        assert [a.status_code for a in answers] == [200, 200]
        assert all(a.json()["load_duration"] > 0 for a in answers)
        assert _loaded_names(http) == ["first:latest"]  # one server for both


def _loaded_names(http: httpx.Client) -> list[str]:
    return sorted(m["model"] for m in http.get("/api/ps").json()["models"])


def test_memory_budget_evicts_the_least_recently_used_idle_model(
    tmp_path: Path, tiny_model: Path
) -> None:
    manifest = tmp_path / "mlxlama.toml"
    # Each tiny server is estimated at its weights, a 256 MiB margin and its 64 MB bound on
    # KV caches: two do not fit 400MB.
    text = MANIFEST.format(model=tiny_model).replace(
        "max_loaded = 1", 'max_loaded = 3\nmemory_budget = "400MB"'
    )
    text = text.replace("version = 1\n", 'version = 1\n\n[defaults]\nkv_cache = "64MB"\n', 1)
    manifest.write_text(text, encoding="utf-8")
    with (
        gateway_in_thread(manifest) as running,
        httpx.Client(base_url=running.url, trust_env=False, timeout=120) as http,
    ):
        assert http.post("/api/chat", json=_chat_body("second")).status_code == 200
        assert http.post("/api/chat", json=_chat_body("first")).status_code == 200
        assert _loaded_names(http) == ["first:latest"]
        metrics = http.get("/metrics").text
        assert "mlx_lama_memory_budget_bytes 419430400" in metrics
        assert 'mlx_lama_model_loads_total{model="second",result="ok"} 1' in metrics
