"""``GET /mlx-lama/stats`` and ``POST /mlx-lama/restart`` against a real gateway
serving the tiny model: the figures ``mlx-lama top`` shows, counted from real
requests, and a restart that replaces the server process."""

from __future__ import annotations

from pathlib import Path

import httpx
import psutil
import pytest

from tests.fixtures.gateway import gateway_in_thread, tiny_on_demand, wait_for

pytestmark = pytest.mark.server

DEADLINE = 180.0  # s; only how long a hung test waits, never a performance bound


def _chat(client: httpx.Client, **extra: object) -> httpx.Response:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], **extra}
    return client.post("/api/chat", json=body)


def test_stats_count_what_each_server_did(tmp_path: Path, tiny_model: Path) -> None:
    with (
        gateway_in_thread(tiny_on_demand(tmp_path, tiny_model)) as gateway,
        httpx.Client(base_url=gateway.url, trust_env=False, timeout=DEADLINE) as client,
    ):
        idle = client.get("/mlx-lama/stats").json()
        (row,) = idle["servers"]
        assert (row["name"], row["state"], row["requests"], row["pid"]) == (
            "tiny",
            "stopped",
            0,
            None,
        )
        assert idle["recent"] == [] and idle["system"]["memory_total"] > 0

        assert _chat(client, stream=False).status_code == 200
        assert _chat(client).status_code == 200  # streamed
        refused = _chat(client, options={"temperature": -1})  # after routing: tiny's error
        assert refused.status_code == 400
        assert client.post("/api/chat", json={"model": "ghost"}).status_code == 404

        stats = client.get("/mlx-lama/stats").json()
        (row,) = stats["servers"]
        assert row["state"] == "ready" and row["backend"] == "mlx-lm"
        assert (row["requests"], row["errors"]) == (3, 1)
        assert row["completion_tokens"] > 0 and row["prompt_tokens"] > 0
        assert row["ttft_p50"] > 0 and row["tokens_per_second"] > 0
        assert row["pid"] == gateway.pid_of("tiny") and row["memory_bytes"] > 0
        assert row["estimate_bytes"] > 64 * 2**20  # its weights, its KV cache bound, a margin
        assert row["load_seconds"] > 0 and row["loads"] == 1 and row["crashes"] == 0
        assert 0 < row["keep_alive_left"] <= 3600
        assert Path(row["log"]).is_file()  # a client on this machine is told where the log is
        recent = stats["recent"]
        assert [(r["model"], r["status"]) for r in recent] == [
            ("", 404), ("tiny", 400), ("tiny", 200), ("tiny", 200)
        ]  # fmt: skip
        assert stats["gateway"]["requests"] == 4 and stats["gateway"]["requests_per_second"] > 0


def test_restart_replaces_the_server_process(tmp_path: Path, tiny_model: Path) -> None:
    with (
        gateway_in_thread(tiny_on_demand(tmp_path, tiny_model)) as gateway,
        httpx.Client(base_url=gateway.url, trust_env=False, timeout=DEADLINE) as client,
    ):
        stopped = client.post("/mlx-lama/restart", json={"model": "tiny"})
        assert stopped.status_code == 409 and "not running" in stopped.json()["error"]
        unknown = client.post("/mlx-lama/restart", json={"model": "ghost"})
        assert unknown.status_code == 404

        assert _chat(client, stream=False).status_code == 200
        old = gateway.pid_of("tiny")
        reply = client.post("/mlx-lama/restart", json={"model": "tiny"})
        assert reply.status_code == 200 and reply.json() == {"status": "restarted", "model": "tiny"}
        new = gateway.pid_of("tiny")
        assert new != old
        wait_for(lambda: not psutil.pid_exists(old), 30, "the old server to exit")
        (row,) = client.get("/mlx-lama/stats").json()["servers"]
        assert (row["state"], row["pid"], row["loads"]) == ("ready", new, 2)
        assert _chat(client, stream=False).status_code == 200  # the new one answers
