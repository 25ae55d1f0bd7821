"""Fixtures every mlx-lama test gets, and the opt-in ones for models, hub and cache.

Autouse, for every test:

* ``isolated_env``: ``HOME``, ``MLX_LAMA_HOME``, ``HF_HOME``/``HF_HUB_CACHE``
  (and every huggingface_hub constant derived from them) point under the
  test's ``tmp_path``; ``HF_HUB_OFFLINE=1``; ``MLX_LAMA_MANIFEST``, ``HF_TOKEN``
  and friends unset. The cwd is left alone (use ``monkeypatch.chdir``).
* ``network_guard``: in-process connections and DNS lookups to anything but
  localhost raise ``NetworkBlocked`` and fail the test.

Opt-in:

* ``tiny_model`` (session): folder of a random-weight MLX llama (read-only;
  copy it before changing it); ``tiny_embedding_model`` (a BERT for the embedding
  engine) and ``tiny_vision_model`` (a Qwen2-VL for vllm-mlx's vision path) alike.
* ``hub``: a running :class:`HubStandIn`, with ``HF_ENDPOINT`` pointing at it
  and offline mode off (in-process and for subprocesses).
* ``published_model``: ``hub`` with the tiny model published as
  :data:`TINY_REPO_ID`.
* ``cached_model``: the tiny model in the test's HF cache as :data:`TINY_REPO_ID`.

Markers:

* ``server``: the test starts a real engine, daemon or mlx-lama process (seconds,
  not milliseconds). Applied automatically from the test's code and checked
  while it runs (``tests/fixtures/markers.py``); ``-m "not server"`` is the
  fast loop.
* ``engine(NAME)``: the test runs the NAME engine (``vllm-mlx``). It is skipped,
  with the reason, when that engine is not installed, unless
  ``MLX_LAMA_REQUIRE_ENGINES`` is set (``.ci/run`` sets it): then it fails, so
  CI proves every engine.

Helpers live in ``tests/fixtures/`` (import them as ``tests.fixtures.<module>``).
"""

from __future__ import annotations

import atexit
import fcntl
import functools
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlx_lama.backends.interpreters import ENGINES_ENV, engines_dir
from tests.fixtures import hf_env, markers, netguard

# Belt and braces, before anything imports huggingface_hub: even code that runs
# outside a test (collection, session fixtures) sees a throwaway home.
_SESSION_ROOT = Path(tempfile.mkdtemp(prefix="mlx-lama-tests-"))
atexit.register(shutil.rmtree, _SESSION_ROOT, ignore_errors=True)
# Engines installed in environments of their own (`mlx-lama install vllm-mlx`) are
# found under the real MLX_LAMA_HOME, which every test replaces with a throwaway one:
# the tests use them from where they are (and never write there).
os.environ[ENGINES_ENV] = str(engines_dir())
hf_env.isolated_environ(os.environ, _SESSION_ROOT)
# As mlx-lama's own processes do (backends/mlx_lm.py): nothing here needs PyTorch,
# which transformers would otherwise import into every worker with mlx_lm (2.5 s and
# ~600 MB each). The tests that PyTorch stays out of engines run in children.
sys.modules.setdefault("torch", None)  # type: ignore[arg-type]

from tests.fixtures.hf_cache import CachedRepo, place_in_cache  # noqa: E402
from tests.fixtures.hub import HubStandIn  # noqa: E402
from tests.fixtures.tiny_model import make_tiny_model  # noqa: E402

TINY_REPO_ID = "mlx-test/tiny-llama"
REQUIRE_ENGINES = "MLX_LAMA_REQUIRE_ENGINES"

sys.addaudithook(markers.note_process)  # for server_marker_holds


def pytest_configure(config: pytest.Config) -> None:
    """A suite started in the background from a non-interactive shell runs with
    SIGINT ignored, and a child inherits an ignored signal through exec: the CLI
    under test would never see the Ctrl-C a test sends it. Python's own handler
    instead is reset to the default in every child, so the tests mean the same
    however the suite was started."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: two workers a core, at most eight. Most of a server test is spent
    waiting (for an engine to load, a daemon to notice), so twice the cores keeps them
    busy; past eight, the engines' memory grows faster than the run gets shorter."""
    return min(8, 2 * (os.cpu_count() or 1))


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``server`` every test that starts one, and put the tests sharing a module's
    servers in one xdist group (see ``tests/fixtures/markers.py``)."""
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        fixtures = item.fixturenames
        if item.get_closest_marker("server") is None and markers.starts_servers(
            item.path, item.originalname, fixtures
        ):
            item.add_marker(pytest.mark.server)
        if markers.shared_servers(item.path).intersection(fixtures):
            item.add_marker(pytest.mark.xdist_group(item.path.stem))


@pytest.fixture(autouse=True)
def server_marker_holds(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that started an engine or mlx-lama process without the ``server``
    marker: the marker would lie, and ``-m "not server"`` would be slow."""
    markers.started.clear()
    yield
    problem = markers.unmarked_server(markers.started, request.node.get_closest_marker("server"))
    if problem is not None:
        pytest.fail(problem, pytrace=False)


@functools.cache
def _engine_installed(engine: str) -> bool:
    """In its own environment (``mlx-lama install``), here, or as a binary on PATH."""
    from mlx_lama.backends.base import get_backend

    return get_backend(engine).launchable()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip (or, with ``MLX_LAMA_REQUIRE_ENGINES``, fail) a test whose ``engine``
    is not installed here."""
    for marker in item.iter_markers("engine"):
        engine = str(marker.args[0])
        if _engine_installed(engine):
            continue
        why = f"the {engine} engine is not installed (`mlx-lama install {engine}` installs it)"
        if os.environ.get(REQUIRE_ENGINES):
            pytest.fail(f"{why}; {REQUIRE_ENGINES} is set, so every engine must be", False)
        pytest.skip(why)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> hf_env.IsolatedEnv:
    """Point all user state under ``tmp_path / "env"``; see the module docstring."""
    return hf_env.isolate(monkeypatch, tmp_path / "env")


@pytest.fixture(autouse=True)
def network_guard() -> Iterator[list[str]]:
    """Yield the list of refused attempts; a test that expects one must clear() it."""
    with netguard.guarded() as attempts:
        yield attempts
    if attempts:
        pytest.fail("non-local network access attempted:\n" + "\n".join(attempts))


def made_once(factory: pytest.TempPathFactory, name: str, make: Callable[[Path], object]) -> Path:
    """The folder ``name`` that ``make`` fills, made once per run: the first xdist
    worker to ask makes it, under a lock, in the run's folder; the others wait."""
    root = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # this run's folder, above each worker's own
    folder = root / "models" / name
    folder.parent.mkdir(parents=True, exist_ok=True)
    with (root / "models" / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not folder.is_dir():
            making = folder.with_name(f"{name}.partial")
            shutil.rmtree(making, ignore_errors=True)
            make(making)
            making.rename(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight MLX llama (seed 0)."""
    return made_once(tmp_path_factory, "tiny-llama", lambda f: make_tiny_model(f, seed=0))


@pytest.fixture(scope="session")
def tiny_embedding_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight BERT embedding model (seed 0, 32 floats a vector, 64-token
    context; ``tests/fixtures/tiny_embedding.py``)."""
    from tests.fixtures.tiny_embedding import make_tiny_embedding_model

    return made_once(tmp_path_factory, "tiny-bert", lambda f: make_tiny_embedding_model(f, seed=0))


@pytest.fixture(scope="session")
def tiny_vision_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Qwen2-VL (seed 0; ``tests/fixtures/tiny_vision.py``) that mlx-vlm
    loads and vllm-mlx serves on its multimodal path."""
    from tests.fixtures.tiny_vision import make_tiny_vision_model

    return made_once(tmp_path_factory, "tiny-qwen2-vl", lambda f: make_tiny_vision_model(f, seed=0))


@pytest.fixture
def hub(
    isolated_env: hf_env.IsolatedEnv,
    network_guard: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[HubStandIn]:
    """A running Hub stand-in that huggingface_hub (here and in children) talks to."""
    stand_in = HubStandIn().start()
    try:
        hf_env.go_online(monkeypatch, stand_in.url)
        yield stand_in
    finally:
        stand_in.stop()
        # Drop huggingface_hub's pooled connections to the stopped server.
        http = sys.modules.get("huggingface_hub.utils._http")
        if http is not None:
            http.close_session()


@dataclass(frozen=True)
class PublishedRepo:
    hub: HubStandIn
    repo_id: str
    commit: str
    source: Path


@pytest.fixture
def published_model(hub: HubStandIn, tiny_model: Path) -> PublishedRepo:
    """The tiny model published on the stand-in as TINY_REPO_ID (branch main)."""
    commit = hub.add_repo(TINY_REPO_ID, tiny_model)
    return PublishedRepo(hub=hub, repo_id=TINY_REPO_ID, commit=commit, source=tiny_model)


@pytest.fixture
def cached_model(tiny_model: Path, isolated_env: hf_env.IsolatedEnv) -> CachedRepo:
    """The tiny model already "pulled": in the test's HF cache as TINY_REPO_ID@main.

    Its commit equals ``published_model.commit``, so a test using both sees an
    up-to-date cache.
    """
    return place_in_cache(tiny_model, isolated_env.hf_hub_cache, TINY_REPO_ID)
