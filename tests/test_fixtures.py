"""Proof that the shared test fixtures do what the rest of the suite relies on.

Covers ``tests/conftest.py`` and ``tests/fixtures/``: isolation of user state,
the network guard, the tiny model (loads, generates words, renders its chat
template), the Hub stand-in (driven by the real huggingface_hub), the cache
layout helper, and the server helper against a real ``mlx_lm server``.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from huggingface_hub import (
    HfApi,
    hf_hub_download,
    scan_cache_dir,
    snapshot_download,
)
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from mlx_lama import paths
from tests.conftest import TINY_REPO_ID, PublishedRepo
from tests.fixtures import hf_env
from tests.fixtures.hf_cache import CachedRepo, place_in_cache
from tests.fixtures.hub import HubStandIn
from tests.fixtures.netguard import NetworkBlocked
from tests.fixtures.servers import (
    ServerFailed,
    free_port,
    mlx_lm_server_argv,
    running_server,
    start_server,
    vllm_mlx_argv,
)
from tests.fixtures.tiny_model import make_tiny_model, vocab

WORDS = set(vocab())


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_words(text: str) -> None:
    assert text.strip(), "expected some generated text"
    unknown = [w for w in text.split() if w not in WORDS]
    assert not unknown, f"not vocabulary words: {unknown} in {text!r}"


# -- isolation ---------------------------------------------------------------


def test_state_lives_under_tmp_path(
    tmp_path: Path, isolated_env: hf_env.IsolatedEnv, request: pytest.FixtureRequest
) -> None:
    assert paths.home() == isolated_env.mlx_lama_home
    assert paths.home().is_relative_to(tmp_path)
    assert paths.hf_hub_cache() == isolated_env.hf_hub_cache
    assert paths.hf_hub_cache().is_relative_to(tmp_path)
    assert Path.home().is_relative_to(tmp_path)
    # Derived constants follow, including copies other modules made at import.
    assert Path(hf_constants.HF_HOME).is_relative_to(tmp_path)
    assert Path(hf_constants.HF_TOKEN_PATH).is_relative_to(tmp_path)
    assert Path(hf_constants.HF_XET_CACHE).is_relative_to(tmp_path)
    assert Path(hf_constants.AGENT_HARNESSES_PATH).is_relative_to(tmp_path)
    assert scan_cache_dir().cache_dir == isolated_env.hf_hub_cache.resolve()
    assert os.environ["HF_HUB_OFFLINE"] == "1" and hf_constants.HF_HUB_OFFLINE
    for name in ("MLX_LAMA_MANIFEST", "HF_TOKEN", "HF_ENDPOINT", "HUGGING_FACE_HUB_TOKEN"):
        assert name not in os.environ
    assert hf_constants.ENDPOINT == "https://huggingface.co"
    # The cwd is not changed for the test.
    assert Path.cwd() == request.config.invocation_params.dir


def test_writes_do_not_reach_the_real_home(isolated_env: hf_env.IsolatedEnv) -> None:
    real_state = hf_env.REAL_HOME / ".mlx-lama"
    existed = real_state.exists()
    paths.config_file().parent.mkdir(parents=True)
    paths.config_file().write_text("x: 1\n")
    assert paths.config_file().is_relative_to(isolated_env.root)
    assert real_state.exists() == existed
    from huggingface_hub import get_token

    assert get_token() is None  # neither HF_TOKEN nor the real token file is visible


def test_subprocesses_inherit_the_isolation(isolated_env: hf_env.IsolatedEnv) -> None:
    probe = (
        "import json; from huggingface_hub import constants as c; "
        "print(json.dumps([c.HF_HUB_CACHE, c.HF_HUB_OFFLINE, c.HF_TOKEN_PATH]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    cache, offline, token_path = json.loads(out.stdout)
    assert Path(cache) == isolated_env.hf_hub_cache
    assert offline is True
    assert Path(token_path).is_relative_to(isolated_env.root)


def test_offline_mode_is_effective_in_process() -> None:
    with pytest.raises(LocalEntryNotFoundError, match="HF_HUB_OFFLINE"):
        snapshot_download("some-org/not-cached")


# -- network guard -------------------------------------------------------------


def test_guard_refuses_non_local_connect(network_guard: list[str]) -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock,
        pytest.raises(NetworkBlocked, match=r"10\.1\.2\.3"),
    ):
        sock.connect(("10.1.2.3", 80))
    with pytest.raises(NetworkBlocked, match=r"DNS lookup of 'huggingface\.co'"):
        socket.create_connection(("huggingface.co", 443), timeout=1)
    # Loud through HTTP clients too: not turned into a quiet ConnectError.
    with pytest.raises(NetworkBlocked):
        httpx.get("http://10.1.2.3/", timeout=1)
    assert len(network_guard) == 3
    network_guard.clear()  # expected attempts; otherwise the fixture fails the test


def test_guard_allows_loopback() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        for host in ("127.0.0.1", "localhost"):
            with socket.create_connection((host, port), timeout=2):
                pass


# -- tiny model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded_tiny(tiny_model: Path) -> tuple[Any, Any]:
    import mlx_lm

    model, tokenizer = mlx_lm.load(str(tiny_model))[:2]
    return model, tokenizer


def test_tiny_model_folder(tiny_model: Path) -> None:
    config = json.loads((tiny_model / "config.json").read_text())
    tokenizer = json.loads((tiny_model / "tokenizer.json").read_text())
    assert config["model_type"] == "llama"
    assert config["num_hidden_layers"] == 2 and config["hidden_size"] == 64
    assert config["vocab_size"] == len(tokenizer["model"]["vocab"]) == len(vocab())
    assert tokenizer["model"]["type"] == "WordLevel"
    assert (tiny_model / "model.safetensors").stat().st_size > 0


def test_tiny_model_generates_vocabulary_words(loaded_tiny: tuple[Any, Any]) -> None:
    import mlx_lm

    model, tokenizer = loaded_tiny
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello how are you"}], add_generation_prompt=True
    )
    text = mlx_lm.generate(model, tokenizer, prompt=prompt, max_tokens=12)
    assert_words(text)
    assert len(text.split()) == 12  # greedy decoding never picks </s> (zeroed row)
    assert mlx_lm.generate(model, tokenizer, prompt=prompt, max_tokens=12) == text
    streamed = list(mlx_lm.stream_generate(model, tokenizer, prompt=prompt, max_tokens=12))
    assert "".join(r.text for r in streamed) == text
    assert streamed[-1].finish_reason == "length"


def test_chat_template_renders_plain_words(loaded_tiny: tuple[Any, Any]) -> None:
    _, tokenizer = loaded_tiny
    messages = [
        {"role": "system", "content": "be clear"},
        {"role": "user", "content": "hello"},
    ]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == "system: be clear\nuser: hello\nassistant:"
    ids = tokenizer.encode(rendered, add_special_tokens=False)
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == "system : be clear user : hello assistant :"


def test_tiny_model_is_deterministic_per_seed(tiny_model: Path, tmp_path: Path) -> None:
    again = make_tiny_model(tmp_path / "again", seed=0)
    other = make_tiny_model(tmp_path / "other", seed=1)
    weights = "model.safetensors"
    assert (again / weights).read_bytes() == (tiny_model / weights).read_bytes()
    assert (other / weights).read_bytes() != (tiny_model / weights).read_bytes()


# -- hub stand-in ----------------------------------------------------------------


def test_snapshot_download_is_byte_identical(published_model: PublishedRepo) -> None:
    hub, repo_id = published_model.hub, published_model.repo_id
    folder = Path(snapshot_download(repo_id))
    assert folder.name == published_model.commit
    assert folder.parent.name == "snapshots"
    assert folder_bytes(folder) == folder_bytes(published_model.source)
    log = hub.request_log
    assert ("GET", f"/api/models/{repo_id}/revision/main") in log
    for name in folder_bytes(published_model.source):
        assert ("GET", f"/{repo_id}/resolve/{published_model.commit}/{name}") in log
    total = sum(len(b) for b in folder_bytes(published_model.source).values())
    assert hub.bytes_served() == total

    hub.clear_log()
    assert Path(snapshot_download(repo_id)) == folder
    assert hub.bytes_served() == 0  # ETags and commit matched the cache: nothing refetched


def test_api_metadata_matches_the_files(published_model: PublishedRepo) -> None:
    api = HfApi()
    info = api.model_info(published_model.repo_id, files_metadata=True)
    source = folder_bytes(published_model.source)
    assert info.sha == published_model.commit
    assert info.siblings is not None
    assert {s.rfilename: s.size for s in info.siblings} == {k: len(v) for k, v in source.items()}
    weights = next(s for s in info.siblings if s.rfilename == "model.safetensors")
    assert weights.lfs is not None and weights.lfs.size == len(source["model.safetensors"])
    tree = {f.path for f in api.list_repo_tree(published_model.repo_id, recursive=True)}
    assert tree == set(source)
    path = hf_hub_download(published_model.repo_id, "config.json")
    assert Path(path).read_bytes() == source["config.json"]


def test_unknown_repo_revision_and_file_raise_hub_errors(published_model: PublishedRepo) -> None:
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("nobody/nothing")
    with pytest.raises(RevisionNotFoundError):
        snapshot_download(published_model.repo_id, revision="no-such-branch")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(published_model.repo_id, "missing.bin")
    published_model.hub.add_repo("org/gated", {"config.json": b"{}"}, gated=True)
    with pytest.raises(GatedRepoError):
        hf_hub_download("org/gated", "config.json")


def test_ranged_get_returns_206(published_model: PublishedRepo) -> None:
    data = folder_bytes(published_model.source)["model.safetensors"]
    url = f"{published_model.hub.url}/{published_model.repo_id}/resolve/main/model.safetensors"
    with httpx.Client(trust_env=False) as client:
        head = client.head(url)
        assert head.status_code == 200
        assert head.headers["X-Repo-Commit"] == published_model.commit
        assert head.headers["Content-Length"] == str(len(data))
        assert head.headers["X-Linked-Etag"].strip('"') == head.headers["ETag"].strip('"')
        part = client.get(url, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206
        assert part.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
        assert part.content == data[100:200]
        tail = client.get(url, headers={"Range": "bytes=-10"})
        assert tail.status_code == 206 and tail.content == data[-10:]
        beyond = client.get(url, headers={"Range": f"bytes={len(data)}-"})
        assert beyond.status_code == 416


def test_cut_download_is_retried_by_the_client(published_model: PublishedRepo) -> None:
    hub = published_model.hub
    hub.cut_next_download("model.safetensors", after_bytes=50_000)
    path = hf_hub_download(published_model.repo_id, "model.safetensors")
    expected = (published_model.source / "model.safetensors").read_bytes()
    assert Path(path).read_bytes() == expected
    gets = [r for r in hub.requests if r.method == "GET" and r.file == "model.safetensors"]
    # huggingface_hub reads 10 MB chunks, so the 50 kB it got before the cut were
    # never handed over: it retries from byte 0 rather than with a Range.
    assert [r.body_bytes for r in gets] == [50_000, len(expected)]


def test_new_commit_moves_main(published_model: PublishedRepo, tmp_path: Path) -> None:
    hub, repo_id = published_model.hub, published_model.repo_id
    first = Path(snapshot_download(repo_id))
    changed = dict(hub.files(repo_id))
    changed["README.md"] = b"# updated\n"
    second_sha = hub.add_repo(repo_id, changed)
    assert second_sha != published_model.commit
    assert hub.add_repo(repo_id, changed) == second_sha  # unchanged content: no new commit
    second = Path(snapshot_download(repo_id))
    assert second.name == second_sha and first.exists()
    assert (second / "README.md").read_bytes() == b"# updated\n"
    assert Path(snapshot_download(repo_id, revision=published_model.commit)) == first


def test_tags_refs_paths_info_and_search(published_model: PublishedRepo) -> None:
    hub, repo_id = published_model.hub, published_model.repo_id
    assert hub.add_tag(repo_id, "v1") == published_model.commit
    api = HfApi()
    refs = api.list_repo_refs(repo_id)
    assert [(b.name, b.target_commit) for b in refs.branches] == [("main", published_model.commit)]
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", published_model.commit)]
    folder = Path(snapshot_download(repo_id, revision="v1"))
    assert folder.name == published_model.commit
    found = api.get_paths_info(repo_id, ["config.json", "nope.txt"])
    assert [f.path for f in found] == ["config.json"]
    assert [m.id for m in api.list_models(search="tiny")] == [repo_id]
    assert list(api.list_models(search="absent")) == []


def test_subprocesses_download_from_the_hub(
    published_model: PublishedRepo, isolated_env: hf_env.IsolatedEnv
) -> None:
    probe = (
        "from huggingface_hub import snapshot_download; "
        f"print(snapshot_download({published_model.repo_id!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    folder = Path(out.stdout.strip().splitlines()[-1])
    assert folder.is_relative_to(isolated_env.hf_hub_cache)
    assert folder.name == published_model.commit
    assert published_model.hub.bytes_served() == sum(
        len(b) for b in folder_bytes(published_model.source).values()
    )


def test_lfs_files_can_redirect_to_a_cdn_origin(published_model: PublishedRepo) -> None:
    hub = published_model.hub
    hub.lfs_redirect = True
    path = hf_hub_download(published_model.repo_id, "model.safetensors")
    expected = (published_model.source / "model.safetensors").read_bytes()
    assert Path(path).read_bytes() == expected
    # LFS blobs are named after their sha256 (X-Linked-Etag), as with the real Hub.
    assert Path(path).resolve().name == hashlib.sha256(expected).hexdigest()
    assert any(p.startswith("/cdn/") for m, p in hub.request_log if m == "GET")


def test_stopped_hub_refuses_connections() -> None:
    stand_in = HubStandIn().start()
    url = stand_in.url
    assert httpx.get(url + "/api/models", timeout=2, trust_env=False).json() == []
    stand_in.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/api/models", timeout=2, trust_env=False)


# -- cache layout ----------------------------------------------------------------


def test_cached_model_is_seen_by_scan_cache_dir(cached_model: CachedRepo) -> None:
    info = scan_cache_dir()
    assert info.warnings == []
    (repo,) = info.repos
    assert repo.repo_id == TINY_REPO_ID and repo.repo_type == "model"
    (revision,) = repo.revisions
    assert revision.commit_hash == cached_model.commit
    assert revision.refs == frozenset({"main"})
    assert repo.size_on_disk == cached_model.size_on_disk
    assert cached_model.size_on_disk == sum(f.size for f in cached_model.files.values())
    assert folder_bytes(revision.snapshot_path) == {
        p: f.data for p, f in cached_model.files.items()
    }
    for link in revision.snapshot_path.iterdir():
        assert link.is_symlink() and not link.readlink().is_absolute()


def test_cached_model_loads_offline_by_repo_id(cached_model: CachedRepo) -> None:
    import mlx_lm

    assert Path(snapshot_download(TINY_REPO_ID)) == cached_model.snapshot_path
    model, tokenizer = mlx_lm.load(TINY_REPO_ID)[:2]
    assert_words(mlx_lm.generate(model, tokenizer, prompt="hello", max_tokens=4))


def test_cache_and_hub_agree_on_the_commit(
    published_model: PublishedRepo, cached_model: CachedRepo
) -> None:
    assert cached_model.commit == published_model.commit
    assert Path(snapshot_download(TINY_REPO_ID)) == cached_model.snapshot_path
    assert published_model.hub.bytes_served() == 0


def test_place_in_cache_pinned_commit_writes_no_ref(tmp_path: Path) -> None:
    sha = "ab" * 20
    cached = place_in_cache({"a/b.txt": b"hi"}, tmp_path / "c", "o/r", revision=sha, commit=sha)
    (repo,) = scan_cache_dir(tmp_path / "c").repos
    (revision,) = repo.revisions
    assert revision.refs == frozenset() and revision.commit_hash == sha
    assert (cached.snapshot_path / "a" / "b.txt").read_bytes() == b"hi"


# -- servers ---------------------------------------------------------------------


def test_server_helper_reports_early_exit(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "print('boom'); raise SystemExit(3)"]
    server = start_server(argv, port=free_port(), log_path=tmp_path / "s.log")
    try:
        with pytest.raises(ServerFailed, match=r"(?s)code 3.*boom"):
            server.wait_ready(timeout=30)
    finally:
        server.stop()


def test_server_helper_kills_a_server_ignoring_sigterm(tmp_path: Path) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    server = start_server([sys.executable, "-c", code], port=free_port(), log_path=tmp_path / "l")
    time.sleep(0.5)  # let it install the handler
    assert server.stop(timeout=1) == -9


def _engine_argv(engine: str, model: Path, port: int) -> tuple[list[str], str]:
    """The server command for ``engine`` and the model name requests must use."""
    if engine == "mlx-lm":
        return mlx_lm_server_argv(model, port), str(model)
    return vllm_mlx_argv(model, port, "--served-model-name", "tiny"), "tiny"


@pytest.mark.server
@pytest.mark.parametrize(
    "engine", ["mlx-lm", pytest.param("vllm-mlx", marks=pytest.mark.engine("vllm-mlx"))]
)
def test_engine_serves_the_tiny_model(
    engine: str, tiny_model: Path, loaded_tiny: tuple[Any, Any], tmp_path: Path
) -> None:
    import mlx_lm

    messages = [{"role": "user", "content": "hello there"}]
    port = free_port()
    argv, served_name = _engine_argv(engine, tiny_model, port)
    request = {"model": served_name, "messages": messages, "max_tokens": 8, "temperature": 0}
    with running_server(argv, port=port, log_path=tmp_path / f"{engine}.log") as server:
        reply = httpx.post(
            f"{server.url}/v1/chat/completions", json=request, timeout=120, trust_env=False
        )
        assert reply.status_code == 200, server.describe(reply.text)
        pid = server.pid
    body = reply.json()
    content = body["choices"][0]["message"]["content"]
    assert_words(content)
    assert body["usage"]["completion_tokens"] == 8
    # Same weights, same greedy decoding: the server ran *this* model.
    model, tokenizer = loaded_tiny
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert content == mlx_lm.generate(model, tokenizer, prompt=prompt, max_tokens=8)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped and reaped
