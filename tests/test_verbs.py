"""The Ollama verbs that edit the manifest: pull, cp, serve MODEL, stop, rm.

Each verb changes only the lines it must: the tests diff the manifest before
and after and compare the added and removed lines with what the verb should
write, so every comment and untouched line is checked. Servers are real
``mlx_lm.server`` processes on the tiny model, pulls go to the Hub stand-in,
and the daemon, where one is used, is a real ``mlx-lama serve`` subprocess.
"""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from mlx_lama import paths
from mlx_lama.orchestrator import process, pulled
from mlx_lama.orchestrator.cache import is_complete, scan_cache
from mlx_lama.schema import load_manifest
from mlx_lama.schema.lockfile import lock_path_for, read_lock
from tests.conftest import TINY_REPO_ID, PublishedRepo
from tests.fixtures.cli import cli
from tests.fixtures.gateway import gateway_process, reap_servers

READY = "180"  # --timeout for a starting tiny server, generously


def _changes(before: str, after: str) -> tuple[list[str], list[str]]:
    """(lines removed, lines added) going from ``before`` to ``after``, blank lines
    aside (a new table may bring one; where the diff puts it is arbitrary)."""
    removed, added = [], []
    for line in difflib.ndiff(before.splitlines(), after.splitlines()):
        if not line[2:].strip():
            continue
        if line.startswith("- "):
            removed.append(line[2:])
        elif line.startswith("+ "):
            added.append(line[2:])
    return removed, added


def _verb(manifest: Path, *args: str) -> tuple[str, str]:
    """Run a verb on ``manifest``; return (text before, text after). It must succeed."""
    before = manifest.read_text(encoding="utf-8")
    code, out, err = cli(*args, "-f", str(manifest))
    assert code == 0, f"mlx-lama {' '.join(args)} failed:\n{out}\n{err}"
    return before, manifest.read_text(encoding="utf-8")


def _manifest_with_comments(tmp_path: Path, tiny_model: Path) -> Path:
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_model, folder)
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(
        f"""\
# Team models: keep this file in git.
version = 1

[server]
keep_alive = "5m"   # the gateway's default

# A model nobody touches in this test.
[models.keep]
path = "{folder}"    # a local folder
serve = "never"  # on disk only

# The one the verbs play with.
[models.tiny]
path = "{folder}"

# Sampling, low and steady.
[models.tiny.parameters]
temperature = 0.2  # low
""",
        encoding="utf-8",
    )
    return manifest


@pytest.mark.server  # `serve` starts the engine in this process
def test_verbs_keep_every_comment_and_untouched_line(
    tmp_path: Path, tiny_model: Path, published_model: PublishedRepo
) -> None:
    manifest = _manifest_with_comments(tmp_path, tiny_model)
    home = paths.home()
    try:
        # serve MODEL: one added key, and a server that answers.
        before, after = _verb(manifest, "serve", "tiny", "--timeout", READY)
        assert _changes(before, after) == ([], ['serve = "always"'])
        record = process.running_record("tiny")
        assert record is not None, "serve tiny started no server"
        with httpx.Client(trust_env=False, timeout=30) as client:
            assert client.get(f"http://127.0.0.1:{record.port}/v1/models").status_code == 200

        # stop: the same key flips to never, and the server is gone.
        before, after = _verb(manifest, "stop", "tiny")
        assert _changes(before, after) == (['serve = "always"'], ['serve = "never"'])
        assert process.running_record("tiny") is None
        assert process.exited(record) is not None

        # cp: an [aliases] table of one line appears; nothing else moves.
        before, after = _verb(manifest, "cp", "tiny", "little")
        assert _changes(before, after) == ([], ["[aliases]", 'little = "tiny"'])

        # pull: a new table at the end, with the repo (served on demand: no serve key).
        before, after = _verb(manifest, "pull", TINY_REPO_ID)
        removed, added = _changes(before, after)
        assert removed == []
        assert f'[models."{TINY_REPO_ID}"]' in added
        assert f'repo = "{TINY_REPO_ID}"' in added and not [a for a in added if "serve" in a]
        assert after.startswith(before.rstrip("\n"))  # appended, not interleaved

        # rm: exactly the lines pull added go again; then the alias.
        before, after = _verb(manifest, "rm", TINY_REPO_ID)
        assert after.rstrip("\n") == before[: before.index(f'\n\n[models."{TINY_REPO_ID}"]')]
        before, after = _verb(manifest, "rm", "little")
        removed, added = _changes(before, after)
        assert added == [] and 'little = "tiny"' in removed and "[aliases]" in removed
        for comment in ("# Team models", "# A model nobody", "# The one the verbs", "# low"):
            assert comment in after
    finally:
        reap_servers(home)


def test_pull_downloads_records_and_locks(tmp_path: Path, published_model: PublishedRepo) -> None:
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text("version = 1\n", encoding="utf-8")
    code, _out, err = cli("pull", TINY_REPO_ID, "-f", str(manifest))
    assert code == 0, err
    loaded = load_manifest(manifest)
    assert loaded.models[TINY_REPO_ID].repo == TINY_REPO_ID
    assert loaded.serve_mode(TINY_REPO_ID) == "on-demand"  # as after ollama pull
    locked = read_lock(lock_path_for(manifest)).get(TINY_REPO_ID)
    assert locked is not None
    assert locked.commit == published_model.commit
    repos, _ = scan_cache(paths.hf_hub_cache())
    repo = next(r for r in repos if r.repo_id == TINY_REPO_ID)
    assert is_complete(repo, locked.commit, locked.files)
    assert f"pull {TINY_REPO_ID}" in err  # the progress line

    # Pulling it again keeps the entry as it is (no second serve key, no duplicate).
    before = manifest.read_text(encoding="utf-8")
    assert cli("pull", TINY_REPO_ID, "-f", str(manifest))[0] == 0
    assert manifest.read_text(encoding="utf-8") == before


def test_pull_serve_says_how_a_new_model_is_served(
    tmp_path: Path, published_model: PublishedRepo
) -> None:
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text("version = 1\n", encoding="utf-8")
    code, _out, err = cli("pull", TINY_REPO_ID, "--serve", "sometimes", "-f", str(manifest))
    assert code == 2 and "--serve 'sometimes'" in err and "on-demand, always, never" in err
    assert manifest.read_text(encoding="utf-8") == "version = 1\n"  # refused before anything
    assert cli("pull", TINY_REPO_ID, "--serve", "never", "-f", str(manifest))[0] == 0
    assert 'serve = "never"' in manifest.read_text(encoding="utf-8")
    assert load_manifest(manifest).serve_mode(TINY_REPO_ID) == "never"


def test_pull_refuses_unknown_names_before_changing_anything(
    tmp_path: Path, published_model: PublishedRepo
) -> None:
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text("# mine\nversion = 1\n", encoding="utf-8")
    code, _out, err = cli("pull", TINY_REPO_ID, "nosuchmodel", "-f", str(manifest))
    assert code != 0
    assert "nosuchmodel" in err and "Traceback" not in err
    assert manifest.read_text(encoding="utf-8") == "# mine\nversion = 1\n"

    code, _out, err = cli("pull", "mlx-test/not-on-the-hub", "-f", str(manifest))
    assert code != 0 and "not-on-the-hub" in err
    assert manifest.read_text(encoding="utf-8") == "# mine\nversion = 1\n"


def test_eight_pulls_at_once_all_land(tmp_path: Path, published_model: PublishedRepo) -> None:
    repos = [f"mlx-test/tiny-{n}" for n in range(8)]
    for repo in repos:
        published_model.hub.add_repo(repo, published_model.source)
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text("# eight at once\nversion = 1\n", encoding="utf-8")
    argv = [sys.executable, "-m", "mlx_lama", "pull", "-f", str(manifest)]
    running = [
        subprocess.Popen([*argv, repo], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for repo in repos
    ]
    try:
        results = [p.communicate(timeout=300) for p in running]
    finally:
        for p in running:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_out, err) in zip(running, results, strict=True):
        assert p.returncode == 0, err.decode()
    loaded = load_manifest(manifest)
    assert sorted(loaded.models) == repos
    lock = read_lock(lock_path_for(manifest))
    assert sorted(m.name for m in lock.models) == repos
    cached, _ = scan_cache(paths.hf_hub_cache())
    by_id = {r.repo_id: r for r in cached}
    for repo in repos:
        locked = lock.get(repo)
        assert locked is not None
        assert is_complete(by_id.get(repo), locked.commit, locked.files), repo
    assert manifest.read_text(encoding="utf-8").startswith("# eight at once\n")


def test_rm_frees_pulled_files_unless_another_entry_uses_them(
    tmp_path: Path, published_model: PublishedRepo
) -> None:
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text("version = 1\n", encoding="utf-8")
    assert cli("pull", TINY_REPO_ID, "-f", str(manifest))[0] == 0
    # A second entry on the same repo keeps the files when the first goes.
    text = manifest.read_text(encoding="utf-8")
    manifest.write_text(text + f'\n[models.twin]\nrepo = "{TINY_REPO_ID}"\n', encoding="utf-8")
    repo_folder = paths.hf_hub_cache() / "models--mlx-test--tiny-llama"

    code, out, err = cli("rm", TINY_REPO_ID, "-f", str(manifest))
    assert code == 0, err
    assert out.strip() == f"deleted '{TINY_REPO_ID}'"
    assert "twin still use" in err
    assert repo_folder.is_dir() and TINY_REPO_ID in pulled.read_pulled()

    code, out, err = cli("rm", "twin", "-f", str(manifest))
    assert code == 0, err
    assert out.strip() == "deleted 'twin'" and "freed" in err
    assert not repo_folder.exists() and TINY_REPO_ID not in pulled.read_pulled()
    assert load_manifest(manifest).models == {}
    assert read_lock(lock_path_for(manifest)).models == ()


def test_rm_keeps_files_mlx_lama_did_not_download(tmp_path: Path, cached_model: object) -> None:
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(f'version = 1\n[models.tiny]\nrepo = "{TINY_REPO_ID}"\n', "utf-8")
    code, _out, err = cli("rm", "tiny", "-f", str(manifest))
    assert code == 0, err
    assert "did not download" in err
    assert (paths.hf_hub_cache() / "models--mlx-test--tiny-llama").is_dir()


def test_bad_names_are_refused_and_nothing_changes(tmp_path: Path, tiny_model: Path) -> None:
    manifest = _manifest_with_comments(tmp_path, tiny_model)
    original = manifest.read_text(encoding="utf-8")
    for args, says in [
        (("rm", "tiny", "ghost"), "ghost"),
        (("cp", "ghost", "spirit"), "ghost"),
        (("cp", "tiny", "keep"), "keep"),
        (("cp", "tiny", "../../etc"), "etc"),
        (("stop", "ghost"), "ghost"),
        (("stop", "tiny"), "not running"),
        (("serve", "tiny", "--stop-all-on-exit"), "daemon"),
        (("serve", "--port", "9000"), "MODEL"),
    ]:
        code, _out, err = cli(*args, "-f", str(manifest))
        assert code != 0, args
        assert says in err and "Traceback" not in err, (args, err)
        assert manifest.read_text(encoding="utf-8") == original, args


def test_verbs_hand_the_change_to_a_running_daemon(tmp_path: Path, tiny_model: Path) -> None:
    manifest = _manifest_with_comments(tmp_path, tiny_model)
    env = dict(os.environ, MLX_LAMA_PROBE_INTERVAL="0")
    with gateway_process(manifest, log_path=tmp_path / "daemon.log", env=env) as gateway:
        # serve MODEL: the daemon starts it, and the verb returns once it answers.
        code, _out, err = cli("serve", "tiny", "-f", str(manifest), "--timeout", READY)
        assert code == 0, err
        assert "daemon" in err
        models = gateway.health()["models"]
        assert isinstance(models, dict) and models["tiny"]["state"] == "ready"
        pid = gateway.pid_of("tiny")

        # cp: the alias answers through the gateway as soon as the verb returns.
        assert cli("cp", "tiny", "little", "-f", str(manifest))[0] == 0
        with httpx.Client(trust_env=False, timeout=30) as client:
            names = [m["name"] for m in client.get(gateway.url + "/api/tags").json()["models"]]
        assert "little:latest" in names or "little" in names

        # stop: serve = "never"; the daemon stops the server before the verb returns.
        code, _out, err = cli("stop", "tiny", "-f", str(manifest))
        assert code == 0, err
        models = gateway.health()["models"]
        assert isinstance(models, dict) and "tiny" not in models
        assert not _alive(pid)

        # rm of a served model: the daemon stops its server before rm returns.
        assert cli("serve", "tiny", "-f", str(manifest), "--timeout", READY)[0] == 0
        pid = gateway.pid_of("tiny")
        code, out, err = cli("rm", "tiny", "-f", str(manifest))
        assert code == 0, err
        assert out.strip() == "deleted 'tiny'"
        assert not _alive(pid)
        with httpx.Client(trust_env=False, timeout=30) as client:
            names = [m["name"] for m in client.get(gateway.url + "/api/tags").json()["models"]]
        assert not any(n.startswith(("tiny", "little")) for n in names), names


def test_verbs_use_the_global_manifest_when_there_is_no_project_one(
    tmp_path: Path, published_model: PublishedRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no mlxlama.toml here or above
    assert cli("pull", TINY_REPO_ID)[0] == 0
    assert cli("cp", TINY_REPO_ID, "tiny")[0] == 0
    manifest = paths.global_manifest()
    loaded = load_manifest(manifest)
    assert list(loaded.models) == [TINY_REPO_ID] and loaded.aliases == {"tiny": TINY_REPO_ID}
    assert not (tmp_path / "mlxlama.toml").exists()
    code, out, _err = cli("rm", "tiny")
    assert code == 0 and out.strip() == "deleted 'tiny'"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(autouse=True)
def _no_servers_left() -> object:
    yield None
    reap_servers(paths.home())
