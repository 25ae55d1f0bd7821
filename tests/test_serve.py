"""``mlx-lama serve``: where it listens, what it refuses, and applying + adopting on start."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import psutil
import pytest

from mlx_lama.netaddr import parse_listen_address
from tests.fixtures.cli import cli
from tests.fixtures.gateway import gateway_process
from tests.fixtures.servers import free_port


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ("127.0.0.1", 11434)),
        ("0.0.0.0", ("0.0.0.0", 11434)),
        ("127.0.0.1:11435", ("127.0.0.1", 11435)),
        (":8080", ("0.0.0.0", 8080)),
        ("http://localhost", ("localhost", 80)),
        ("https://example.lan", ("example.lan", 443)),
        ("http://127.0.0.1:9000/", ("127.0.0.1", 9000)),
        ("[::1]:11500", ("::1", 11500)),
        ("::1", ("::1", 11434)),
    ],
)
def test_listen_address_takes_the_forms_ollama_host_takes(
    text: str, expected: tuple[str, int]
) -> None:
    assert parse_listen_address(text, "127.0.0.1", 11434) == expected


@pytest.mark.parametrize("text", ["127.0.0.1:http", "host:99999", "ftp://x", "[::1"])
def test_listen_address_refuses_bad_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_listen_address(text, "127.0.0.1", 11434)


def _manifest(tmp_path: Path, body: str = "") -> Path:
    path = tmp_path / "mlxlama.toml"
    path.write_text("version = 1\n" + body, encoding="utf-8")
    return path


def test_non_loopback_without_a_key_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLX_LAMA_HOST", "0.0.0.0:11434")
    code, out, err = cli("serve", "-f", str(_manifest(tmp_path)))
    assert code == 2
    assert "without an API key" in err and "--insecure" in err and "api_key" in err
    assert "Traceback" not in err and out == ""


def test_bad_mlx_lama_host_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLX_LAMA_HOST", "127.0.0.1:notaport")
    code, _out, err = cli("serve", "-f", str(_manifest(tmp_path)))
    assert code == 2 and "MLX_LAMA_HOST" in err and "port" in err


def test_a_taken_port_fails_fast_naming_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        monkeypatch.setenv("MLX_LAMA_HOST", f"127.0.0.1:{port}")
        code, _out, err = cli("serve", "-f", str(_manifest(tmp_path)))
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in err and "MLX_LAMA_HOST" in err


@pytest.mark.server
def test_serve_applies_the_manifest_and_adopts_running_servers(
    tmp_path: Path, tiny_model: Path
) -> None:
    port = free_port()
    manifest = _manifest(
        tmp_path,
        f'\n[models."tiny"]\npath = "{tiny_model}"\nserve = "always"\nport = {port}\n',
    )
    with gateway_process(manifest, log_path=tmp_path / "first.log") as first:
        health = first.health()
        assert health["models"] == {
            "tiny": {
                "state": "ready",
                "serve": "always",
                "in_flight": 0,
                "backend": "mlx-lm",
                "pid": first.pid_of("tiny"),
                "port": port,
            }
        }
        pid = first.pid_of("tiny")
        assert first.process is not None
        first.process.stop(timeout=60)
        # An "always" server outlives the gateway (like `apply`); the next one adopts it.
        assert psutil.pid_exists(pid)
        with gateway_process(manifest, log_path=tmp_path / "second.log") as second:
            assert second.pid_of("tiny") == pid
            answer = httpx.post(
                second.url + "/api/generate",
                json={
                    "model": "tiny",
                    "prompt": "hi",
                    "stream": False,
                    "options": {"num_predict": 2},
                },
                trust_env=False,
                timeout=60,
            ).json()
            assert answer["done"] is True and answer["response"]
            assert "adopted running servers: tiny" in (tmp_path / "second.log").read_text()
