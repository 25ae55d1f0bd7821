"""The Backend interface: registry, detection, capabilities, install, in-process generation."""

from __future__ import annotations

import importlib.metadata
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import mlx_lama
from mlx_lama.backends.base import (
    Backend,
    BackendMissingError,
    Capabilities,
    LaunchSpec,
    get_backend,
    launch_spec,
)
from mlx_lama.backends.interpreters import ENGINES_ENV
from mlx_lama.cli import app
from mlx_lama.errors import MlxLamaError
from mlx_lama.orchestrator.state import ServerSpec
from tests.fixtures.servers import server_spec

runner = CliRunner()


@pytest.fixture
def no_vllm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """vllm-mlx as on a machine without it: the import is blocked, it has no
    environment of its own and PATH has no binary."""
    monkeypatch.setitem(sys.modules, "vllm_mlx", None)
    monkeypatch.setenv(ENGINES_ENV, str(tmp_path / "no-engines"))
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def test_backend_modules_load_lazily_and_never_import_their_engine() -> None:
    code = (
        "import sys, json\n"
        "from mlx_lama.backends.base import get_backend, backend_names\n"
        "caps = {n: get_backend(n).capabilities().names() for n in backend_names()}\n"
        "print(json.dumps([caps, sorted(m for m in ('mlx_lm', 'vllm_mlx', 'mlx_embeddings', 'mlx') "
        "if m in sys.modules)]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    caps, imported = json.loads(done.stdout)
    assert imported == []
    assert caps == {
        "external": ["chat", "completion", "embeddings", "structured_output"],
        "mlx-lm": ["chat", "completion", "adapters", "distributed"],
        "mlx-embeddings": ["embeddings"],
        "vllm-mlx": [
            "chat",
            "completion",
            "vision",
            "continuous_batching",
            "structured_output",
        ],
    }


@pytest.mark.parametrize(
    "name", ["mlx-lm", pytest.param("vllm-mlx", marks=pytest.mark.engine("vllm-mlx"))]
)
def test_installed_engines_are_detected_with_their_version(name: str) -> None:
    """mlx-lm with mlx-lama, vllm-mlx in its own environment (``mlx-lama install``)."""
    found = get_backend(name).detect(services=False)
    if name == "mlx-lm":
        assert (found.available, found.found_by) == (True, "package")
        assert found.version == importlib.metadata.version(name)
        return
    assert (found.available, found.found_by) == (True, "environment")
    asked = subprocess.run(
        [found.detail, "-c", "import importlib.metadata as m; print(m.version('vllm-mlx'))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert found.version == asked.stdout.strip()


def test_a_missing_package_is_unavailable_with_its_install_command(no_vllm: None) -> None:
    backend = get_backend("vllm-mlx")
    assert backend.detect(services=False).available is False
    commands = backend.install_commands()
    assert commands and "vllm-mlx" in commands[-1]
    with pytest.raises(BackendMissingError, match="mlx-lama install vllm-mlx"):
        backend.serve(server_spec(Path("/m"), "vllm-mlx"), 8081)


def test_backends_command_reports_missing_engines(no_vllm: None) -> None:
    result = runner.invoke(app, ["backends", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["vllm-mlx"]["available"] is False
    assert rows["vllm-mlx"]["install"] == "mlx-lama install vllm-mlx"
    assert rows["mlx-lm"]["available"] is True and rows["mlx-lm"]["install"] is None
    table = runner.invoke(app, ["backends"]).stdout.splitlines()
    assert table[0].split()[:2] == ["NAME", "AVAILABLE"]
    vllm = next(line for line in table if line.startswith("vllm-mlx"))
    assert vllm.split()[1] == "no" and vllm.endswith("mlx-lama install vllm-mlx")


def test_plan_refuses_a_manifest_that_serves_a_missing_backend(
    no_vllm: None, tmp_path: Path
) -> None:
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(
        'version = 1\n[models.m]\nrepo = "org/m"\nbackend = "vllm-mlx"\nserve = "always"\n'
    )
    result = runner.invoke(app, ["plan", "-f", str(manifest)])
    assert result.exit_code == 1
    assert result.stderr == (
        "error: the vllm-mlx backend is not installed, and m uses it "
        "(run `mlx-lama install vllm-mlx`)\n"
    )
    # Kept on disk but never served: no engine needed.
    manifest.write_text(
        'version = 1\n[models.m]\nrepo = "org/m"\nbackend = "vllm-mlx"\nserve = "never"\n'
    )
    assert runner.invoke(app, ["plan", "-f", str(manifest)]).exit_code == 0


def test_a_binary_on_path_stands_in_for_the_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "mlx_lm", None)
    binary = tmp_path / "bin" / "mlx_lm.server"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    monkeypatch.setenv("PATH", str(binary.parent))
    found = get_backend("mlx-lm").detect(services=False)
    assert (found.available, found.found_by, found.detail) == (True, "binary", str(binary))
    argv = launch_spec(server_spec(Path("/models/tiny")), 8081).argv
    assert argv[:3] == (str(binary), "--model", "/models/tiny")


class _Probe(Backend):
    name = "probe"
    python_packages = ("no_such_package_here",)

    def capabilities(self) -> Capabilities:
        return Capabilities()

    def serve(self, server: ServerSpec, port: int) -> LaunchSpec:
        raise NotImplementedError


def test_a_running_service_is_found_first() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        probe = _Probe()
        probe.service_ports = (port,)  # type: ignore[misc]
        found = probe.detect()
        assert (found.available, found.found_by, found.detail) == (
            True,
            "service",
            f"127.0.0.1:{port}",
        )
    assert probe.detect().available is False


def test_install_shows_the_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    result = runner.invoke(app, ["install", "vllm-mlx", "--dry-run"])
    assert result.exit_code == 0
    assert result.stderr.startswith("$ ") and " vllm-mlx" in result.stderr
    assert sys.executable in result.stderr or "engines/vllm-mlx" in result.stderr
    monkeypatch.setenv("PATH", str(tmp_path))  # no uv: pip
    result = runner.invoke(app, ["install", "mlx-lm", "--dry-run"])
    assert result.stderr == f"$ {sys.executable} -m pip install mlx-lm\n"
    assert runner.invoke(app, ["install", "external"]).stdout == (
        "The external backend has nothing to install.\n"
    )
    unknown = runner.invoke(app, ["install", "llama.cpp"])
    assert unknown.exit_code == 1
    assert "unknown backend 'llama.cpp'" in unknown.stderr


def test_in_process_generation_streams_text_and_stats(tiny_model: Path) -> None:
    chunks = list(
        get_backend("mlx-lm").generate(
            tiny_model,
            messages=[{"role": "user", "content": "hello there"}],
            parameters={"num_predict": 6, "temperature": 0.0},
        )
    )
    *pieces, last = chunks
    text = "".join(c.text for c in pieces)
    assert text.strip() and all(not c.done for c in pieces)
    assert last.done and last.text == "" and last.stats is not None
    stats: Any = last.stats
    assert stats.generated_tokens == 6 and stats.finish_reason == "length"
    assert stats.prompt_tokens > 0
    assert stats.tokens_per_second > 0 and stats.peak_memory > 0


def test_engines_without_in_process_generation_say_so(tiny_model: Path) -> None:
    with pytest.raises(MlxLamaError, match="cannot generate in-process"):
        next(iter(get_backend("vllm-mlx").generate(tiny_model, prompt="hi")))


@pytest.mark.server  # a child process that loads mlx-lm (and torch, once): seconds
@pytest.mark.engine("vllm-mlx")  # its environment is the one here with PyTorch in it
@pytest.mark.parametrize(("torch_env", "torch_loaded"), [(None, False), ("1", True)])
def test_an_in_process_model_loads_without_pytorch_unless_asked(
    tiny_model: Path, torch_env: str | None, torch_loaded: bool
) -> None:
    """``mlx-lama run`` without a daemon loads mlx-lm into its own process: left out
    of it too, as in an engine (``MLX_LAMA_ENGINE_TORCH=1`` lets it in). Run by the
    Python of vllm-mlx's environment, which has PyTorch (mlx-lama's has none), with
    mlx-lama's source on its path."""
    python = get_backend("vllm-mlx").environment_python()
    assert python is not None, "install vllm-mlx in its own environment: mlx-lama install"
    script = (
        "import sys; from pathlib import Path; "
        "from mlx_lama.backends.mlx_lm import MlxLmModel; "
        f"MlxLmModel(Path({str(tiny_model)!r})); "
        "print(sys.modules.get('torch') is not None)"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLX_LAMA_ENGINE_TORCH"}
    env["PYTHONPATH"] = str(Path(mlx_lama.__file__).parents[1])
    if torch_env is not None:
        env["MLX_LAMA_ENGINE_TORCH"] = torch_env
    done = subprocess.run(
        [python, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(torch_loaded)
