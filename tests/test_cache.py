"""Tests for ``mlx_lama.orchestrator.cache``: scanning, completeness and removal.

Caches are real Hugging Face cache layouts built in ``tmp_path`` by
``tests/fixtures/hf_cache.place_in_cache``; the lean scanner is checked against
huggingface_hub's own ``scan_cache_dir`` on the same folders.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import scan_cache_dir

from mlx_lama.orchestrator.cache import CacheError, is_complete, remove_repo, scan_cache
from mlx_lama.orchestrator.state import CachedRepo, CachedRevision
from tests.conftest import TINY_REPO_ID
from tests.fixtures import hf_cache, hf_env

SHA_A = "a" * 40
SHA_B = "b" * 40


def regular_bytes(folder: Path) -> int:
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def as_hub_sees_it(cache: Path) -> list[dict[str, object]]:
    """scan_cache_dir's model repos, in the shape of our CachedRepo."""
    info = scan_cache_dir(cache)
    assert info.warnings == []
    out = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        revisions = []
        for rev in sorted(repo.revisions, key=lambda r: r.commit_hash):
            files = sorted(
                (f.file_path.relative_to(rev.snapshot_path).as_posix(), f.size_on_disk)
                for f in rev.files
            )
            revisions.append(
                (
                    rev.commit_hash,
                    tuple(sorted(rev.refs)),
                    rev.size_on_disk,
                    tuple(files),
                    rev.snapshot_path,
                    rev.last_modified,
                )
            )
        out.append(
            {
                "repo_id": repo.repo_id,
                "size": repo.size_on_disk,
                "path": repo.repo_path,
                "last_modified": repo.last_modified,
                "revisions": revisions,
            }
        )
    return out


def as_we_see_it(repos: tuple[CachedRepo, ...]) -> list[dict[str, object]]:
    return [
        {
            "repo_id": repo.repo_id,
            "size": repo.size_on_disk,
            "path": repo.path,
            "last_modified": repo.last_modified,
            "revisions": [
                (r.commit, r.refs, r.size_on_disk, r.files, r.snapshot_path, r.last_modified)
                for r in sorted(repo.revisions, key=lambda r: r.commit)
            ],
        }
        for repo in repos
    ]


# -- scan --------------------------------------------------------------------------


def test_scan_matches_the_cached_model(cached_model: hf_cache.CachedRepo) -> None:
    repos, warnings = scan_cache()
    assert warnings == ()
    (repo,) = repos
    assert repo.repo_id == TINY_REPO_ID
    assert repo.path == cached_model.repo_path
    assert repo.size_on_disk == cached_model.size_on_disk
    assert not repo.incomplete
    (revision,) = repo.revisions
    assert revision == CachedRevision(
        commit=cached_model.commit,
        refs=("main",),
        size_on_disk=cached_model.size_on_disk,
        files=tuple(sorted((p, f.size) for p, f in cached_model.files.items())),
        snapshot_path=cached_model.snapshot_path,
        last_modified=revision.last_modified,
    )
    assert revision.last_modified == repo.last_modified > 0
    assert repo.revision(cached_model.commit) is revision
    assert repo.revision(SHA_A) is None


def test_missing_cache_folder_is_empty_without_warnings(tmp_path: Path) -> None:
    assert scan_cache(tmp_path / "nowhere") == ((), ())


def test_cache_path_that_is_a_file_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "hub").write_text("x")
    repos, warnings = scan_cache(tmp_path / "hub")
    assert repos == ()
    (warning,) = warnings
    assert "cannot read the Hugging Face cache" in warning


def test_scan_agrees_with_scan_cache_dir(tmp_path: Path, tiny_model: Path) -> None:
    cache = tmp_path / "hub"
    hf_cache.place_in_cache(tiny_model, cache, "mlx-test/tiny-llama")
    # Two revisions sharing a blob, one of them on a PR ref, nested paths.
    hf_cache.place_in_cache(
        {"config.json": b"{}", "sub/dir/tokenizer.json": b"[1]"}, cache, "org/multi", commit=SHA_A
    )
    hf_cache.place_in_cache(
        {"config.json": b"{}", "model.safetensors": b"w" * 1000},
        cache,
        "org/multi",
        revision="refs/pr/1",
        commit=SHA_B,
    )
    # Pinned to a commit (no ref), an empty snapshot, a copied (not linked) file.
    hf_cache.place_in_cache({"a.json": b"1"}, cache, "solo", revision=SHA_A, commit=SHA_A)
    empty = hf_cache.place_in_cache({}, cache, "org/empty", commit=SHA_B)
    copied = hf_cache.place_in_cache({"c.json": b"abc"}, cache, "org/copied", commit=SHA_A)
    link = copied.snapshot_path / "c.json"
    link.unlink()
    link.write_bytes(b"abcdef")
    # Not a model: scan_cache_dir lists it, we ignore it.
    dataset = cache / "datasets--org--data" / "snapshots" / SHA_A
    dataset.mkdir(parents=True)
    (cache / ".locks").mkdir()
    (cache / "CACHEDIR.TAG").write_text("Signature: 8a477f597d28d172789f06886806bc55")

    repos, warnings = scan_cache(cache)
    assert warnings == ()
    assert [r.repo_id for r in repos] == [
        "mlx-test/tiny-llama",
        "org/copied",
        "org/empty",
        "org/multi",
        "solo",
    ]
    assert as_we_see_it(repos) == as_hub_sees_it(cache)
    multi = next(r for r in repos if r.repo_id == "org/multi")
    assert [r.refs for r in multi.revisions] == [("main",), ("refs/pr/1",)]
    (empty_seen,) = (r for r in repos if r.repo_id == "org/empty")
    assert empty_seen.revisions[0].snapshot_path == empty.snapshot_path
    assert empty_seen.revisions[0].files == ()


def test_partial_downloads_are_flagged(cached_model: hf_cache.CachedRepo) -> None:
    blobs = cached_model.repo_path / "blobs"
    (blobs / "0123abcd.5e6f7a8b.incomplete").write_bytes(b"half")
    repos, warnings = scan_cache()
    assert warnings == ()
    (repo,) = repos
    assert repo.incomplete
    # Partial blobs are not part of any revision nor of the size, as for scan_cache_dir.
    assert repo.size_on_disk == cached_model.size_on_disk
    assert [f.file_path.name for f in scan_cache_dir().incomplete_files] == [
        "0123abcd.5e6f7a8b.incomplete"
    ]


def test_damaged_entries_become_warnings(cached_model: hf_cache.CachedRepo) -> None:
    cache = cached_model.repo_path.parent
    # A broken link costs that file only.
    broken = hf_cache.place_in_cache(
        {"config.json": b"{}", "model.safetensors": b"x" * 10}, cache, "org/broken"
    )
    broken.blob_path("model.safetensors").unlink()
    # A ref to a snapshot that is gone costs that ref only.
    dangling = hf_cache.place_in_cache({"config.json": b"{}"}, cache, "org/dangling")
    (dangling.repo_path / "refs" / "v2").write_text(SHA_B)
    # These have no usable snapshots at all.
    (cache / "models--org--nosnapshots" / "blobs").mkdir(parents=True)
    (cache / "models--org--file").write_text("not a folder")
    stray = hf_cache.place_in_cache({"config.json": b"{}"}, cache, "org/stray", commit=SHA_A)
    (stray.repo_path / "snapshots" / "README").write_text("?")

    repos, warnings = scan_cache()
    by_id = {r.repo_id: r for r in repos}
    assert sorted(by_id) == ["mlx-test/tiny-llama", "org/broken", "org/dangling", "org/stray"]
    assert by_id["org/broken"].revisions[0].files == (("config.json", 2),)
    assert by_id["org/dangling"].revisions[0].refs == ("main",)
    assert len(warnings) == 5
    joined = "\n".join(warnings)
    assert "org/broken: blob missing" in joined and "model.safetensors" in joined
    assert f"org/dangling: ref v2 points to commit {SHA_B!r}, which has no snapshot" in joined
    assert "org/nosnapshots has no snapshots folder" in joined
    assert "models--org--file" in joined
    assert "org/stray: not a snapshot folder" in joined


def test_scan_of_100_repos_is_fast(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    files = {
        "config.json": b'{"model_type": "llama"}',
        "tokenizer.json": b"{}" * 500,
        "tokenizer_config.json": b"{}",
        "special_tokens_map.json": b"{}",
        "model.safetensors": b"w" * 4096,
        "model.safetensors.index.json": b"{}",
    }
    for i in range(100):
        hf_cache.place_in_cache({**files, "config.json": b"%d" % i}, cache, f"org{i % 9}/m-{i}")
    # Speed is measured by `python -m bench reconcile`, not asserted here.
    repos, warnings = scan_cache(cache)
    assert len(repos) == 100 and warnings == ()
    assert {r.repo_id for r in repos} == {f"org{i % 9}/m-{i}" for i in range(100)}


def test_scanning_does_not_import_the_hub_client(isolated_env: hf_env.IsolatedEnv) -> None:
    code = (
        "import sys; from mlx_lama.orchestrator.cache import scan_cache; scan_cache(); "
        "print(sorted(m for m in sys.modules if m.startswith(('httpx', 'tqdm', 'filelock')) "
        "or m == 'huggingface_hub.hf_api'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


# -- completeness ----------------------------------------------------------------


def _repo(files: tuple[tuple[str, int], ...]) -> CachedRepo:
    revision = CachedRevision(SHA_A, ("main",), 0, files, Path("/c/snapshots") / SHA_A, 0.0)
    return CachedRepo("o/r", 0, (revision,), 0.0, Path("/c"))


@pytest.mark.parametrize(
    ("cached", "wanted", "complete"),
    [
        ((("a.json", 1), ("m.safetensors", 9)), (("a.json", 1), ("m.safetensors", 9)), True),
        ((("a.json", 1), ("m.safetensors", 9), ("x.txt", 3)), (("a.json", 1),), True),
        ((("a.json", 1),), (("a.json", 1), ("m.safetensors", 9)), False),
        ((("a.json", 1), ("m.safetensors", 8)), (("a.json", 1), ("m.safetensors", 9)), False),
        ((("a.json", 1),), (), False),
    ],
)
def test_is_complete(
    cached: tuple[tuple[str, int], ...], wanted: tuple[tuple[str, int], ...], complete: bool
) -> None:
    assert is_complete(_repo(cached), SHA_A, wanted) is complete


def test_is_complete_needs_the_repo_and_the_commit() -> None:
    assert not is_complete(None, SHA_A, (("a.json", 1),))
    assert not is_complete(_repo((("a.json", 1),)), SHA_B, (("a.json", 1),))


def test_is_complete_on_a_real_cache(cached_model: hf_cache.CachedRepo) -> None:
    files = tuple(sorted((p, f.size) for p, f in cached_model.files.items()))
    (repo,) = scan_cache()[0]
    assert is_complete(repo, cached_model.commit, files)
    (cached_model.snapshot_path / "model.safetensors").unlink()  # as if the download stopped
    (repo,) = scan_cache()[0]
    assert not is_complete(repo, cached_model.commit, files)


# -- removal -----------------------------------------------------------------------


def test_remove_deletes_exactly_one_repo(
    cached_model: hf_cache.CachedRepo, isolated_env: hf_env.IsolatedEnv
) -> None:
    cache = isolated_env.hf_hub_cache
    neighbour = hf_cache.place_in_cache({"config.json": b"{}"}, cache, "mlx-test/tiny-llama-2")
    hf_cache.place_in_cache({"config.json": b"[]"}, cache, TINY_REPO_ID, commit=SHA_A)
    (cached_model.repo_path / "blobs" / "dead.12345678.incomplete").write_bytes(b"p" * 100)
    locks = cache / ".locks" / cached_model.repo_path.name
    locks.mkdir(parents=True)
    (locks / "x.lock").write_text("")
    expected = regular_bytes(cached_model.repo_path)

    freed = remove_repo(TINY_REPO_ID)

    assert freed == expected
    assert not cached_model.repo_path.exists()
    assert not locks.exists()
    repos, warnings = scan_cache()
    assert [r.repo_id for r in repos] == ["mlx-test/tiny-llama-2"] and warnings == ()
    assert (neighbour.snapshot_path / "config.json").read_bytes() == b"{}"


def test_remove_keeps_another_repo_that_has_the_same_commit(
    isolated_env: hf_env.IsolatedEnv,
) -> None:
    """Two repos with the same files can have the same commit hash (a fork, a mirror):
    removing one must not remove the other (huggingface_hub's delete_revisions matches
    a hash in every repo)."""
    cache = isolated_env.hf_hub_cache
    files = {"config.json": b"{}", "model.safetensors": b"w" * 64}
    mirrors = [f"org/mirror-{i}" for i in range(12)]
    kept = [hf_cache.place_in_cache(files, cache, name, commit=SHA_A) for name in mirrors]
    # The hub's scan lists repos in no set order: a wrong pick had 12 in 13 to show,
    # and three rounds make a lucky pass (about 1 in 2,000) unlikely.
    for _ in range(3):
        gone = hf_cache.place_in_cache(files, cache, "org/original", commit=SHA_A)

        remove_repo("org/original")

        assert not gone.repo_path.exists()
        repos, warnings = scan_cache()
        assert sorted(r.repo_id for r in repos) == sorted(mirrors) and warnings == ()
        for mirror in kept:
            assert (mirror.snapshot_path / "model.safetensors").read_bytes() == b"w" * 64
            assert (mirror.repo_path / "refs" / "main").read_text() == SHA_A


def test_remove_a_damaged_repo(isolated_env: hf_env.IsolatedEnv) -> None:
    folder = isolated_env.hf_hub_cache / "models--org--damaged"
    (folder / "blobs").mkdir(parents=True)
    (folder / "blobs" / "abc").write_bytes(b"12345")
    assert remove_repo("org/damaged") == 5
    assert not folder.exists()


def test_remove_an_unknown_repo(cached_model: hf_cache.CachedRepo) -> None:
    with pytest.raises(CacheError, match=r"'org/nothing' is not in the Hugging Face cache") as e:
        remove_repo("org/nothing")
    assert "mlx-lama list" in str(e.value)
    assert cached_model.repo_path.exists()


@pytest.mark.parametrize("bad", ["", "../hub", "org/..", "a//b", "/abs"])
def test_remove_refuses_what_is_not_a_repo_id(
    bad: str, cached_model: hf_cache.CachedRepo, isolated_env: hf_env.IsolatedEnv
) -> None:
    with pytest.raises(CacheError, match="not a Hugging Face repo id"):
        remove_repo(bad)
    assert cached_model.repo_path.exists()


def test_remove_does_not_follow_a_linked_repo_folder(
    tmp_path: Path, isolated_env: hf_env.IsolatedEnv
) -> None:
    elsewhere = hf_cache.place_in_cache({"config.json": b"{}"}, tmp_path / "other", "org/x")
    link = isolated_env.hf_hub_cache / "models--org--x"
    link.symlink_to(elsewhere.repo_path)
    with pytest.raises(CacheError):
        remove_repo("org/x")
    assert elsewhere.snapshot_path.exists()
