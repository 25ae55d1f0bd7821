"""Tests for ``mlx_lama.orchestrator.pull``: resolving revisions, downloading, pulled.json.

Everything runs the real huggingface_hub against the Hub stand-in
(``tests/fixtures/hub.py``); nothing is mocked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mlx_lama.orchestrator import pull_errors
from mlx_lama.orchestrator.cache import is_complete, scan_cache
from mlx_lama.orchestrator.pull import (
    MODEL_FILE_PATTERNS,
    matches_model_patterns,
    pull_model,
    resolve_revision,
)
from mlx_lama.orchestrator.pull_errors import PullError
from mlx_lama.orchestrator.pulled import (
    forget_pulled,
    pulled_file,
    read_pulled,
    read_pulled_checked,
    record_pulled,
)
from mlx_lama.orchestrator.state import repo_folder_name
from mlx_lama.schema.lockfile import LockedModel
from tests.conftest import TINY_REPO_ID, PublishedRepo
from tests.fixtures import hf_env
from tests.fixtures.hf_cache import CachedRepo
from tests.fixtures.hub import HubStandIn

BIG = 24 * 1024 * 1024  # above huggingface_hub's 10 MiB write chunk, so progress moves mid-file


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def model_files(source: Path) -> dict[str, bytes]:
    return {k: v for k, v in folder_bytes(source).items() if matches_model_patterns(k)}


class Recorder:
    """A progress callback that keeps every call (thread-safe)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def __call__(self, done: int, total: int) -> None:
        with self._lock:
            self.calls.append((done, total))


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def partial_downloads(cache: Path, repo_id: str) -> list[Path]:
    return sorted((cache / repo_folder_name(repo_id) / "blobs").glob("*.incomplete"))


# -- patterns --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "wanted"),
    [
        ("config.json", True),
        ("model.safetensors", True),
        ("model-00001-of-00002.safetensors", True),
        ("model.safetensors.index.json", True),
        ("tokenizer.json", True),
        ("tokenizer.model", True),
        ("chat_template.jinja", True),
        ("modeling_custom.py", True),
        ("merges.txt", True),
        ("qwen.tiktoken", True),
        ("README.md", False),
        (".gitattributes", False),
        ("pytorch_model.bin", False),
        ("consolidated.pth", False),
        ("model-q4.gguf", False),
        ("consolidated.safetensors", False),  # mistral's duplicate weights
        ("assets/diagram.png", False),
    ],
)
def test_model_file_patterns(path: str, wanted: bool) -> None:
    assert matches_model_patterns(path) is wanted


def test_patterns_are_those_mlx_lm_downloads() -> None:
    assert "model*.safetensors" in MODEL_FILE_PATTERNS
    assert "*.json" in MODEL_FILE_PATTERNS


# -- resolve -----------------------------------------------------------------------


def test_resolve_gives_the_commit_and_the_model_files(published_model: PublishedRepo) -> None:
    hub = published_model.hub
    locked = resolve_revision(TINY_REPO_ID, "main", name="tiny")
    expected = model_files(published_model.source)
    assert "README.md" in folder_bytes(published_model.source)
    assert locked == LockedModel(
        name="tiny",
        repo=TINY_REPO_ID,
        revision="main",
        commit=published_model.commit,
        files=tuple(sorted((k, len(v)) for k, v in expected.items())),
    )
    # One metadata request, no file downloads.
    assert hub.request_log == [("GET", f"/api/models/{TINY_REPO_ID}/revision/main")]
    assert hub.bytes_served() == 0


def test_resolve_a_tag_and_a_commit(published_model: PublishedRepo) -> None:
    hub = published_model.hub
    hub.add_tag(TINY_REPO_ID, "v1")
    changed = dict(hub.files(TINY_REPO_ID))
    changed["config.json"] = b'{"model_type": "llama", "changed": true}'
    newer = hub.add_repo(TINY_REPO_ID, changed)
    assert resolve_revision(TINY_REPO_ID, "v1", name="t").commit == published_model.commit
    assert resolve_revision(TINY_REPO_ID, "main", name="t").commit == newer
    by_sha = resolve_revision(TINY_REPO_ID, published_model.commit, name="t")
    assert by_sha.commit == published_model.commit
    assert by_sha.revision == published_model.commit


def test_resolve_refuses_a_repo_without_model_files(hub: HubStandIn) -> None:
    hub.add_repo("org/docs-only", {"README.md": b"# hi\n", "weights.bin": b"x"})
    with pytest.raises(PullError, match=r"org/docs-only@main holds no model files") as caught:
        resolve_revision("org/docs-only", "main", name="docs")
    assert "[models.docs] repo" in str(caught.value)


def test_unknown_repo(hub: HubStandIn) -> None:
    with pytest.raises(PullError) as caught:
        resolve_revision("nobody/nothing", "main", name="ghost")
    text = str(caught.value)
    assert "'nobody/nothing' was not found" in text
    assert "check the repo id on huggingface.co, or fix [models.ghost] repo in mlxlama.toml" in text
    assert caught.value.repo == "nobody/nothing"


def test_unknown_repo_name_with_a_tag_is_quoted_in_the_hint(hub: HubStandIn) -> None:
    with pytest.raises(PullError, match=r'fix \[models\."ghost:7b"\] repo'):
        resolve_revision("nobody/nothing", "main", name="ghost:7b")


def test_unknown_revision(published_model: PublishedRepo) -> None:
    with pytest.raises(PullError) as caught:
        resolve_revision(TINY_REPO_ID, "no-such-branch", name="tiny")
    text = str(caught.value)
    assert f"revision 'no-such-branch' of model repo '{TINY_REPO_ID}' was not found" in text
    assert "fix [models.tiny] revision in mlxlama.toml" in text
    assert caught.value.revision == "no-such-branch"


def test_invalid_repo_id(hub: HubStandIn) -> None:
    with pytest.raises(PullError, match=r"not a valid Hugging Face repo id.*org/name"):
        resolve_revision("a/b/c", "main", name="bad")


def test_offline_resolve_names_the_fix(network_guard: list[str]) -> None:
    # The autouse isolation sets HF_HUB_OFFLINE=1.
    with pytest.raises(PullError) as caught:
        resolve_revision(TINY_REPO_ID, "main", name="tiny")
    text = str(caught.value)
    assert TINY_REPO_ID in text and "HF_HUB_OFFLINE is set" in text
    assert "unset HF_HUB_OFFLINE to download" in text
    assert network_guard == []


def test_unreachable_hub(hub: HubStandIn) -> None:
    endpoint = hub.url
    hub.stop()  # connection refused from now on
    with pytest.raises(PullError) as caught:
        resolve_revision(TINY_REPO_ID, "main", name="tiny")
    text = str(caught.value)
    assert f"could not reach the Hugging Face Hub at {endpoint} for {TINY_REPO_ID}@main" in text
    assert "check your network connection" in text


# -- pull --------------------------------------------------------------------------


def test_pull_downloads_exactly_the_locked_files(
    published_model: PublishedRepo,
    isolated_env: hf_env.IsolatedEnv,
    capfd: pytest.CaptureFixture[str],
) -> None:
    hub = published_model.hub
    locked = resolve_revision(TINY_REPO_ID, "main", name="tiny")
    hub.clear_log()
    recorder = Recorder()
    snapshot = pull_model(locked, progress=recorder)

    repo_path = isolated_env.hf_hub_cache / repo_folder_name(TINY_REPO_ID)
    assert snapshot == repo_path / "snapshots" / published_model.commit
    expected = model_files(published_model.source)
    assert folder_bytes(snapshot) == expected  # byte-identical, README left out
    assert hub.bytes_served() == sum(len(b) for b in expected.values())
    assert (repo_path / "refs" / "main").read_text() == published_model.commit

    total = locked.size
    assert recorder.calls[-1] == (total, total)
    dones = [done for done, _ in recorder.calls]
    assert dones == sorted(dones)
    assert all(t == total for _, t in recorder.calls)
    assert read_pulled() == {TINY_REPO_ID}
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")  # no progress bars from huggingface_hub


def test_second_pull_of_the_same_commit_downloads_nothing(published_model: PublishedRepo) -> None:
    hub = published_model.hub
    locked = resolve_revision(TINY_REPO_ID, "main", name="tiny")
    first = pull_model(locked)
    hub.clear_log()
    recorder = Recorder()
    assert pull_model(locked, progress=recorder) == first
    assert hub.request_log == []
    assert hub.bytes_served() == 0
    assert recorder.calls == [(locked.size, locked.size)]


def test_pull_of_a_complete_snapshot_works_offline(
    cached_model: CachedRepo, network_guard: list[str]
) -> None:
    files = tuple(
        sorted((p, f.size) for p, f in cached_model.files.items() if matches_model_patterns(p))
    )
    locked = LockedModel("tiny", TINY_REPO_ID, "main", cached_model.commit, files)
    assert pull_model(locked) == cached_model.snapshot_path
    # Not downloaded by mlx-lama: --prune must leave it alone.
    assert read_pulled() == frozenset()


def test_progress_moves_during_a_large_download(hub: HubStandIn) -> None:
    weights = os.urandom(BIG)
    sha = hub.add_repo("org/big", {"config.json": b"{}", "model.safetensors": weights})
    hub.chunk_delay = 0.0005
    locked = resolve_revision("org/big", "main", name="big")
    assert locked.commit == sha and locked.size == BIG + 2
    recorder = Recorder()
    snapshot = pull_model(locked, progress=recorder)
    assert (snapshot / "model.safetensors").read_bytes() == weights
    dones = [done for done, _ in recorder.calls]
    assert dones == sorted(dones)
    assert recorder.calls[-1] == (BIG + 2, BIG + 2)
    assert any(0 < done < BIG for done in dones), recorder.calls


def test_parallel_pulls_of_different_repos(hub: HubStandIn, tiny_model: Path) -> None:
    repos = {
        "org/one": {"config.json": b'{"n": 1}', "model.safetensors": os.urandom(300_000)},
        "org/two": {"config.json": b'{"n": 2}', "model.safetensors": os.urandom(400_000)},
        TINY_REPO_ID: folder_bytes(tiny_model),
    }
    for repo_id, files in repos.items():
        hub.add_repo(repo_id, files)
    hub.chunk_delay = 0.001
    locks = [resolve_revision(repo_id, "main", name=repo_id) for repo_id in repos]
    recorders = {lock.repo: Recorder() for lock in locks}
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {
            lock.repo: pool.submit(pull_model, lock, progress=recorders[lock.repo])
            for lock in locks
        }
        snapshots = {repo: future.result(timeout=120) for repo, future in futures.items()}
    for lock in locks:
        wanted = {k: v for k, v in repos[lock.repo].items() if matches_model_patterns(k)}
        assert folder_bytes(snapshots[lock.repo]) == wanted
        assert recorders[lock.repo].calls[-1] == (lock.size, lock.size)
    assert read_pulled() == set(repos)


def test_pull_of_a_gated_repo(hub: HubStandIn) -> None:
    hub.add_repo("org/gated", {"config.json": b"{}"}, gated=True)
    locked = resolve_revision("org/gated", "main", name="g")  # metadata is public
    with pytest.raises(PullError) as caught:
        pull_model(locked)
    text = str(caught.value)
    assert "'org/gated' is gated" in text and "hf auth login" in text and "HF_TOKEN" in text


def test_pull_of_an_unknown_repo(hub: HubStandIn) -> None:
    locked = LockedModel("ghost", "nobody/nothing", "main", "ab" * 20, (("config.json", 2),))
    with pytest.raises(PullError, match=r"'nobody/nothing' was not found.*\[models\.ghost\]"):
        pull_model(locked)


def test_pull_of_a_commit_no_longer_on_the_hub(published_model: PublishedRepo) -> None:
    gone = LockedModel("tiny", TINY_REPO_ID, "main", "cd" * 20, (("config.json", 2),))
    with pytest.raises(PullError) as caught:
        pull_model(gone)
    text = str(caught.value)
    assert f"commit {'cd' * 20} locked for {TINY_REPO_ID}@main is no longer on the Hub" in text
    assert "run `mlx-lama lock` to resolve [models.tiny] again" in text
    assert caught.value.repo == TINY_REPO_ID and caught.value.revision == "main"


def test_pull_with_nothing_locked(published_model: PublishedRepo) -> None:
    empty = LockedModel("tiny", TINY_REPO_ID, "main", published_model.commit, ())
    with pytest.raises(PullError, match=r"no files are locked for mlx-test/tiny-llama@main"):
        pull_model(empty)
    assert published_model.hub.request_log == []


def test_pull_offline_names_the_fix(network_guard: list[str]) -> None:
    locked = LockedModel("tiny", TINY_REPO_ID, "main", "ab" * 20, (("config.json", 2),))
    with pytest.raises(PullError, match=rf"{TINY_REPO_ID}.*HF_HUB_OFFLINE is set.*unset"):
        pull_model(locked)
    assert network_guard == []


def test_pull_checks_the_sizes_it_was_locked_with(published_model: PublishedRepo) -> None:
    locked = resolve_revision(TINY_REPO_ID, "main", name="tiny")
    files = dict(locked.files)
    files["config.json"] += 1
    files["not-on-the-hub.json"] = 10
    wrong = LockedModel("tiny", TINY_REPO_ID, "main", locked.commit, tuple(sorted(files.items())))
    with pytest.raises(PullError) as caught:
        pull_model(wrong)
    text = str(caught.value)
    assert f"config.json is {files['config.json'] - 1} bytes, expected {files['config.json']}" in (
        text
    )
    assert "not-on-the-hub.json is missing" in text
    assert "run `mlx-lama lock`" in text
    assert read_pulled() == frozenset()


def test_hub_lost_mid_download_leaves_an_incomplete_snapshot(
    hub: HubStandIn, isolated_env: hf_env.IsolatedEnv
) -> None:
    hub.add_repo("org/big", {"config.json": b"{}", "model.safetensors": os.urandom(4_000_000)})
    locked = resolve_revision("org/big", "main", name="big")
    hub.hold_downloads("model.safetensors", after_bytes=1_000_000)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            pull_model(locked)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    wait_for(lambda: bool(partial_downloads(isolated_env.hf_hub_cache, "org/big")))
    hub.stop()
    worker.join(timeout=60)
    assert not worker.is_alive()
    (error,) = errors
    assert isinstance(error, PullError)
    assert "could not reach the Hugging Face Hub" in str(error) and "org/big" in str(error)
    repos, _warnings = scan_cache()
    (repo,) = repos
    assert not is_complete(repo, locked.commit, locked.files)


def test_killed_pull_is_incomplete_then_a_new_pull_completes_it(
    hub: HubStandIn, isolated_env: hf_env.IsolatedEnv
) -> None:
    weights = os.urandom(4_000_000)
    hub.add_repo("org/big", {"config.json": b"{}", "model.safetensors": weights})
    locked = resolve_revision("org/big", "main", name="big")
    hub.hold_downloads("model.safetensors", after_bytes=1_000_000)
    script = (
        "from mlx_lama.orchestrator.pull import pull_model\n"
        "from mlx_lama.schema.lockfile import LockedModel\n"
        f"pull_model(LockedModel(*{(locked.name, locked.repo, locked.revision, locked.commit)!r},"
        f" {locked.files!r}))\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script])
    try:
        wait_for(lambda: bool(partial_downloads(isolated_env.hf_hub_cache, "org/big")), 60)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    partials = partial_downloads(isolated_env.hf_hub_cache, "org/big")
    assert partials

    repos, _warnings = scan_cache()
    (repo,) = repos
    assert repo.incomplete
    assert not is_complete(repo, locked.commit, locked.files)

    # Long dead: the next pull completes the model and clears the leftovers.
    old = time.time() - 3600
    for partial in partials:
        os.utime(partial, (old, old))
    hub.release()
    snapshot = pull_model(locked)
    assert (snapshot / "model.safetensors").read_bytes() == weights
    repos, _warnings = scan_cache()
    (repo,) = repos
    assert not repo.incomplete
    assert is_complete(repo, locked.commit, locked.files)


def test_only_dead_partial_downloads_are_cleared(
    published_model: PublishedRepo, isolated_env: hf_env.IsolatedEnv
) -> None:
    import fcntl

    repo_path = isolated_env.hf_hub_cache / repo_folder_name(TINY_REPO_ID)
    blobs = repo_path / "blobs"
    blobs.mkdir(parents=True)
    old = time.time() - 3600
    dead, locked_one, fresh = (
        blobs / "dead0.1234abcd.incomplete",
        blobs / "live0.1234abcd.incomplete",
        blobs / "new00.1234abcd.incomplete",
    )
    for partial in (dead, locked_one, fresh):
        partial.write_bytes(b"partial")
    for partial in (dead, locked_one):
        os.utime(partial, (old, old))
    lock_file = isolated_env.hf_hub_cache / ".locks" / repo_path.name / "live0.lock"
    lock_file.parent.mkdir(parents=True)
    with lock_file.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a download in another process would
        pull_model(resolve_revision(TINY_REPO_ID, "main", name="tiny"))
    assert not dead.exists()
    assert locked_one.exists() and fresh.exists()


# -- pulled.json ---------------------------------------------------------------------


def test_pulled_record_round_trip(isolated_env: hf_env.IsolatedEnv) -> None:
    assert read_pulled_checked() == ({}, ())
    record_pulled("org/a", now=100)
    record_pulled("org/b", now=200)
    record_pulled("org/a", now=300)
    assert pulled_file() == isolated_env.mlx_lama_home / "pulled.json"
    data = json.loads(pulled_file().read_text())
    assert data == {
        "repos": {
            "org/a": {"first_pulled": 100, "last_pulled": 300},
            "org/b": {"first_pulled": 200, "last_pulled": 200},
        }
    }
    assert read_pulled_checked() == ({"org/a": (), "org/b": ()}, ())  # no project given
    forget_pulled("org/a")
    forget_pulled("org/never")
    assert read_pulled() == {"org/b"}


def test_pulled_record_from_many_threads() -> None:
    names = [f"org/model-{i}" for i in range(40)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(record_pulled, names))
    assert read_pulled() == set(names)
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(forget_pulled, names[:20]))
    assert read_pulled() == set(names[20:])
    assert not list(pulled_file().parent.glob(".pulled.json.*"))  # no temp files left


@pytest.mark.parametrize(
    ("text", "kept", "problem"),
    [
        ("{not json", set(), "not JSON"),
        ("[]", set(), 'no "repos" table'),
        ('{"repos": 3}', set(), 'no "repos" table'),
        (
            '{"repos": {"org/a": {"first_pulled": 1}, "gpt2": {}, "a/b/c": {}, "org/b": 7}}',
            {"org/a", "gpt2"},
            "unreadable entries: a/b/c, org/b",
        ),
    ],
)
def test_damaged_pulled_record(text: str, kept: set[str], problem: str) -> None:
    pulled_file().parent.mkdir(parents=True)
    pulled_file().write_text(text)
    repos, warnings = read_pulled_checked()
    assert set(repos) == kept
    (warning,) = warnings
    assert problem in warning and str(pulled_file()) in warning
    assert "Delete the file" in warning
    # Recording rewrites the file with what could be read, plus the new entry.
    record_pulled("org/new", now=5)
    assert read_pulled_checked() == (dict.fromkeys(kept | {"org/new"}, ()), ())


def test_pulled_record_is_unreadable_not_fatal(isolated_env: hf_env.IsolatedEnv) -> None:
    pulled_file().mkdir(parents=True)  # a folder where the file should be
    repos, warnings = read_pulled_checked()
    assert repos == {}
    (warning,) = warnings
    assert "unreadable" in warning


def test_module_import_is_light() -> None:
    code = (
        "import sys, mlx_lama.orchestrator.pull, mlx_lama.orchestrator.cache; "
        "print(sorted(m for m in ('huggingface_hub.hf_api', 'httpx2', 'httpx', 'tqdm') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_explain_treats_any_transport_error_as_unreachable(hub: HubStandIn) -> None:
    class ConnectError(Exception):  # named like httpx's and httpx2's
        pass

    error = pull_errors.explain(ConnectError("boom"), repo="o/r", revision="main", name="m")
    assert "could not reach the Hugging Face Hub" in str(error)
    other = pull_errors.explain(RuntimeError("odd"), repo="o/r", revision="main", name="m")
    assert "downloading o/r@main failed: RuntimeError: odd" in str(other)
