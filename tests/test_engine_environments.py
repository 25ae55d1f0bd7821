"""Engines in environments of their own (``backends/interpreters.py``): what ``mlx-lama
install`` runs, and how an engine installed there is found and launched.

No network here: an engine environment is made with ``python -m venv`` and given
this environment's packages through a ``.pth`` file, so the engine it finds is
the real vllm-mlx, run by the environment's own interpreter.
"""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import httpx
import psutil
import pytest
from typer.testing import CliRunner

from mlx_lama.backends.base import get_backend, launch_spec
from mlx_lama.backends.interpreters import ENGINES_ENV, engine_main
from mlx_lama.cli import app
from mlx_lama.errors import MlxLamaError
from mlx_lama.orchestrator.process import start_server, stop_server
from mlx_lama.orchestrator.state import RunRecord
from tests.fixtures.servers import server_spec

runner = CliRunner()


@pytest.fixture
def engines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "engines"
    monkeypatch.setenv(ENGINES_ENV, str(folder))
    return folder


def make_environment(folder: Path, *, with_our_packages: bool) -> Path:
    """A virtual environment at ``folder``; its python. With ``with_our_packages``,
    it imports what this one has (vllm-mlx among them)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    if with_our_packages:
        [own] = (Path(p) for p in site.getsitepackages() if Path(p).name == "site-packages")
        lib = next((folder / "lib").glob("python3*")) / "site-packages"
        (lib / "ours.pth").write_text(f"{own}\n")
    return python


def test_vllm_mlx_installs_into_an_environment_of_its_own(
    engines: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    uv = tmp_path / "bin" / "uv"
    uv.parent.mkdir()
    uv.write_text("#!/bin/sh\nexit 0\n")
    uv.chmod(0o755)
    monkeypatch.setenv("PATH", str(uv.parent))
    place = engines / "vllm-mlx"
    assert get_backend("vllm-mlx").install_commands() == [
        [str(uv), "venv", "--python", sys.executable, str(place)],
        [str(uv), "pip", "install", "--python", str(place / "bin/python"), "vllm-mlx"],
    ]
    # mlx-lm, the default engine, goes with mlx-lama
    assert get_backend("mlx-lm").install_commands(upgrade=True) == [
        [str(uv), "pip", "install", "--python", sys.executable, "--upgrade", "mlx-lm"]
    ]
    # an environment that is there already is upgraded in place, not made again
    make_environment(place, with_our_packages=False)
    assert get_backend("vllm-mlx").install_commands(upgrade=True) == [
        [str(uv), "pip", "install", "--python", str(place / "bin/python"), "--upgrade",
         "vllm-mlx"],
    ]  # fmt: skip
    shown = runner.invoke(app, ["install", "vllm-mlx", "--upgrade", "--dry-run"])
    assert shown.exit_code == 0, shown.output
    assert f"$ {uv} pip install --python {place / 'bin/python'} --upgrade vllm-mlx" in (
        shown.stderr
    )


def test_without_uv_it_is_venv_and_pip(engines: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(engines))  # no uv there
    place = engines / "vllm-mlx"
    assert get_backend("vllm-mlx").install_commands() == [
        [sys.executable, "-m", "venv", str(place)],
        [str(place / "bin/python"), "-m", "pip", "install", "vllm-mlx"],
    ]


def test_an_engine_environment_is_found_first_and_runs_the_engine(engines: Path) -> None:
    backend = get_backend("vllm-mlx")
    empty = make_environment(engines / "vllm-mlx", with_our_packages=False)
    assert backend.detect(services=False).found_by == "package"  # it lacks the engine
    shutil.rmtree(engines / "vllm-mlx")
    python = make_environment(engines / "vllm-mlx", with_our_packages=True)
    assert python == empty  # the same place, now with the engine in it
    found = backend.detect(services=False)
    assert (found.available, found.found_by, found.detail) == (True, "environment", str(python))
    assert found.version is not None and found.version[0].isdigit()
    argv = launch_spec(server_spec(Path("/models/tiny"), "vllm-mlx"), 8081).argv
    assert argv[:4] == (str(python), "-c", engine_main("vllm_mlx.cli"), "serve")


@pytest.fixture
def started() -> Iterator[list[RunRecord]]:
    records: list[RunRecord] = []
    try:
        yield records
    finally:
        for record in records:
            with suppress(MlxLamaError):
                stop_server(record, timeout=5)


@pytest.mark.server
@pytest.mark.engine("vllm-mlx")
def test_a_model_is_served_from_its_engines_environment(
    engines: Path, tiny_model: Path, started: list[RunRecord]
) -> None:
    python = make_environment(engines / "vllm-mlx", with_our_packages=True)
    record = start_server(server_spec(tiny_model, "vllm-mlx", parameters=(("num_predict", 2),)))
    started.append(record)
    assert record.argv[0] == str(python)
    assert psutil.Process(record.pid).cmdline()[0] == str(python)
    reply = httpx.post(
        f"http://127.0.0.1:{record.port}/v1/chat/completions",
        json={"model": "tiny:latest", "messages": [{"role": "user", "content": "hello"}]},
        timeout=60,
        trust_env=False,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] == 2
