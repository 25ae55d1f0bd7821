"""Engines in environments of their own (``backends/interpreters.py``): what ``mlx-lama
install`` runs, and how an engine installed there is found and launched.

No network here: an engine environment is made with ``python -m venv`` and given
this environment's packages through a ``.pth`` file, so the engine it finds there
is the real mlx-lm, run by the environment's own interpreter. (vllm-mlx's own
environment, made by ``mlx-lama install vllm-mlx``, serves every vllm-mlx test.)
"""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
from typer.testing import CliRunner

from mlx_lama.backends.base import get_backend, launch_spec
from mlx_lama.backends.interpreters import ENGINES_ENV, PLATFORM_REQUIREMENTS, engine_main
from mlx_lama.cli import app
from mlx_lama.orchestrator.process import start_server
from mlx_lama.orchestrator.state import RunRecord
from tests.fixtures.gateway import wait_for
from tests.fixtures.servers import server_spec
from tests.test_process import cleanup

__all__ = ["cleanup"]  # the fixture that stops what a test started, shared

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
        [str(uv), "pip", "install", "--python", str(place / "bin/python"),
         "--compile-bytecode", "vllm-mlx", *PLATFORM_REQUIREMENTS],
    ]  # fmt: skip
    # mlx-lm, the default engine, goes with mlx-lama
    assert get_backend("mlx-lm").install_commands(upgrade=True) == [
        [str(uv), "pip", "install", "--python", sys.executable, "--upgrade", "mlx-lm"]
    ]
    # an environment that is there already is upgraded in place, not made again
    make_environment(place, with_our_packages=False)
    assert get_backend("vllm-mlx").install_commands(upgrade=True) == [
        [str(uv), "pip", "install", "--python", str(place / "bin/python"),
         "--compile-bytecode", "--upgrade", "vllm-mlx", *PLATFORM_REQUIREMENTS],
    ]  # fmt: skip
    shown = runner.invoke(app, ["install", "vllm-mlx", "--upgrade", "--dry-run"])
    assert shown.exit_code == 0, shown.output
    assert (
        f"$ {uv} pip install --python {place / 'bin/python'} --compile-bytecode --upgrade vllm-mlx"
        in (shown.stderr)
    )  # (and mlx[cpu] off macOS)


def test_without_uv_it_is_venv_and_pip(engines: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(engines))  # no uv there
    place = engines / "vllm-mlx"
    assert get_backend("vllm-mlx").install_commands() == [
        [sys.executable, "-m", "venv", str(place)],
        [str(place / "bin/python"), "-m", "pip", "install", "vllm-mlx", *PLATFORM_REQUIREMENTS],
    ]


def test_an_engine_environment_is_found_first_and_runs_the_engine(engines: Path) -> None:
    """Any engine: mlx-lm here, whose package mlx-lama's environment has too."""
    backend = get_backend("mlx-lm")
    empty = make_environment(engines / "mlx-lm", with_our_packages=False)
    assert backend.detect(services=False).found_by == "package"  # it lacks the engine
    shutil.rmtree(engines / "mlx-lm")
    python = make_environment(engines / "mlx-lm", with_our_packages=True)
    assert python == empty  # the same place, now with the engine in it
    found = backend.detect(services=False)
    assert (found.available, found.found_by, found.detail) == (True, "environment", str(python))
    assert found.version is not None and found.version[0].isdigit()
    argv = launch_spec(server_spec(Path("/models/tiny")), 8081).argv
    assert argv[:4] == (str(python), "-c", engine_main("mlx_lm"), "server")


@pytest.mark.server
def test_a_model_is_served_from_its_engines_environment(
    engines: Path, tiny_model: Path, cleanup: list[RunRecord]
) -> None:
    python = make_environment(engines / "mlx-lm", with_our_packages=True)
    record = start_server(server_spec(tiny_model, parameters=(("num_predict", 2),)))
    cleanup.append(record)
    assert record.argv[0] == str(python)
    assert psutil.Process(record.pid).cmdline()[0] == str(python)
    reply = httpx.post(
        f"http://127.0.0.1:{record.port}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hello"}]},  # mlx-lm: its own model
        timeout=60,
        trust_env=False,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] == 2


def test_uninstall_removes_only_an_unused_engine_environment(engines: Path) -> None:
    python = make_environment(engines / "vllm-mlx", with_our_packages=False)
    other = make_environment(engines / "mlx-lm", with_our_packages=False)
    running = subprocess.Popen(
        [str(python), "-c", "import time; time.sleep(60)"],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: psutil.Process(running.pid).cmdline()[:1] == [str(python)], 10, "exec")
        refused = runner.invoke(app, ["uninstall", "vllm-mlx"])
        assert refused.exit_code == 1
        assert f"in use by process {running.pid}" in refused.stderr
        assert python.exists()  # a server would lose its files under it
    finally:
        running.kill()
        running.wait(10)
    done = runner.invoke(app, ["uninstall", "vllm-mlx"])
    assert done.exit_code == 0, done.output
    assert f"Removed {engines / 'vllm-mlx'}" in done.stdout
    assert not (engines / "vllm-mlx").exists() and other.exists()  # only that engine's
    again = runner.invoke(app, ["uninstall", "vllm-mlx"])
    assert again.exit_code == 1 and "no environment of its own" in again.stderr
