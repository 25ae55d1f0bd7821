"""The ``server`` marker is applied from a test's code and checked against what it ran."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mlx_lama.backends.interpreters import engine_main
from mlx_lama.backends.mlx_lm import ENGINE_MAIN
from tests.fixtures import markers
from tests.fixtures.markers import server_argv, shared_servers, starts_servers

MODULE = """
import asyncio, subprocess, sys
import pytest
from tests.fixtures.gateway import gateway_in_thread
from tests.test_daemon import _chat

def _deep(path):
    return _serve(path)

def _serve(path):
    with gateway_in_thread(path) as running:
        return running

def _cli():
    return subprocess.run([sys.executable, "-m", "mlx_lama", "apply"])

class _Terminal:
    def __init__(self):
        self.child = subprocess.Popen([sys.executable, "-m", "mlx_lama", "run"])

def _argv_only():
    return ["python", "-m", "mlx_lama"]  # not sys.executable: a value compared, not run

async def _fake_engine():
    return await asyncio.start_server(None, "127.0.0.1", 0)

@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    yield _deep(tmp_path_factory.mktemp("x"))

@pytest.fixture
def own(tmp_path):
    yield _serve(tmp_path)

def test_through_helpers(tmp_path):
    _deep(tmp_path)

def test_cli():
    _cli()

def test_imported_helper():
    _chat(None, "a")

def test_fixture(shared):
    pass

def test_plain():
    assert _argv_only()

def test_class():
    _Terminal()

async def test_asyncio_server():
    await _fake_engine()
"""


@pytest.fixture
def module(tmp_path: Path) -> Path:
    path = tmp_path / "test_sample.py"
    path.write_text(textwrap.dedent(MODULE), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("test", "fixtures", "expected"),
    [
        ("test_through_helpers", [], True),  # two calls deep
        ("test_cli", [], True),  # an argv that runs mlx-lama with this Python
        ("test_imported_helper", [], False),  # _chat only sends a request
        ("test_fixture", ["shared"], True),
        ("test_plain", ["own"], True),  # a fixture that starts one
        ("test_plain", [], False),
        ("test_asyncio_server", [], False),  # an in-process fake, not a server
        ("test_class", [], True),  # a class whose method starts mlx-lama
    ],
)
def test_starts_servers_follows_calls_and_fixtures(
    module: Path, test: str, fixtures: list[str], expected: bool
) -> None:
    assert starts_servers(module, test, fixtures) is expected


def test_only_module_wide_server_fixtures_are_shared(module: Path) -> None:
    assert shared_servers(module) == {"shared"}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([sys.executable, "-c", ENGINE_MAIN, "server", "--model", "m"], True),
        ([sys.executable, "-m", "mlx_lama", "serve"], True),
        ([sys.executable, "-m", "vllm_mlx.cli", "serve", "m"], True),
        (["/engines/vllm-mlx/bin/python", "-c", engine_main("vllm_mlx.cli"), "serve"], True),
        ([sys.executable, "-c", "import runpy; runpy.run_module('http.server')", "0"], False),
        (["/venv/bin/mlx-lama", "apply"], True),
        ([sys.executable, "-c", "from mlx_lama.orchestrator.pull import pull_model"], False),
        ([sys.executable, "-c", "import time; time.sleep(60)"], False),
        ([sys.executable, "-c", "import sys; print('mlx_lm' in sys.modules)"], False),
        (["sleep", "60"], False),
    ],
)
def test_server_argv_knows_engines_and_mlx_lama(argv: list[str], expected: bool) -> None:
    assert server_argv(argv) is expected


def test_every_process_a_test_starts_is_seen_and_an_unmarked_server_is_named() -> None:
    engine = [sys.executable, "-c", ENGINE_MAIN, "server", "--help"]
    subprocess.run([sys.executable, "-c", "pass"], check=True, timeout=60)
    assert [sys.executable, "-c", "pass"] in markers.started  # the audit hook saw it
    problem = markers.unmarked_server([*markers.started, engine], None)
    assert problem is not None and "not marked `server`" in problem and "server --help" in problem
    assert markers.unmarked_server([engine], pytest.mark.server) is None
    assert markers.unmarked_server(markers.started, None) is None  # only `python -c pass`
