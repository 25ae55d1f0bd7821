"""plan / apply / lock / list end to end: the hub stand-in, the real HF cache, real servers."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlx_lama import paths
from mlx_lama.orchestrator import process, runrecords
from mlx_lama.orchestrator.cache import scan_cache
from mlx_lama.schema.lockfile import read_lock
from tests.fixtures.cli import cli
from tests.fixtures.hf_cache import place_in_cache
from tests.fixtures.hub import HubStandIn
from tests.fixtures.servers import free_port

REPO_A = "mlx-test/tiny-a"
REPO_B = "mlx-test/tiny-b"


def manifest_text(*entries: tuple[str, str, str]) -> str:
    """``(name, repo, serve)`` entries as a manifest."""
    out = ["version = 1\n"]
    for name, repo, serve in entries:
        out.append(f'\n[models."{name}"]\nrepo = "{repo}"\nserve = "{serve}"\n')
    return "".join(out)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    return folder


@pytest.fixture
def two_repos(hub: HubStandIn, tiny_model: Path) -> HubStandIn:
    hub.add_repo(REPO_A, tiny_model)
    hub.add_repo(REPO_B, tiny_model)
    return hub


@pytest.fixture(autouse=True)
def no_servers_left() -> Iterator[None]:
    """Whatever a test started through apply is stopped afterwards, by PID."""
    try:
        yield
    finally:
        records, _ = runrecords.read_records()
        for record in records:
            process.stop_server(record)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def write(project: Path, text: str) -> Path:
    path = project / "mlxlama.toml"
    path.write_text(text)
    return path


def cached_repos() -> set[str]:
    repos, _ = scan_cache(paths.hf_hub_cache())
    return {r.repo_id for r in repos}


def test_apply_pulls_locks_and_converges(project: Path, two_repos: HubStandIn) -> None:
    manifest = write(project, manifest_text(("a", REPO_A, "never"), ("b", REPO_B, "never")))
    code, out, err = cli("apply", "-f", str(manifest))
    assert code == 0, out + err
    assert "+ pull     model:mlx-test/tiny-a@main  not in the cache" in out
    assert re.search(r"^Pulled 2 models in \d+\.\ds$", out, re.MULTILINE), out
    assert cached_repos() == {REPO_A, REPO_B}
    lock = read_lock(project / "mlxlama.lock")
    assert [(m.name, m.repo, m.revision) for m in lock.models] == [
        ("a", REPO_A, "main"),
        ("b", REPO_B, "main"),
    ]
    assert all(len(m.commit) == 40 and m.files for m in lock.models)
    assert "README.md" not in dict(lock.models[0].files)

    code, out, _ = cli("plan", "-f", str(manifest), "--detailed-exitcode")
    assert (code, out) == (0, "No changes.\n")
    two_repos.clear_log()
    code, out, _ = cli("apply", "-f", str(manifest))
    assert (code, out) == (0, "No changes.\n")
    assert two_repos.request_log == []


def test_plan_detailed_exitcode_and_json_when_changes_are_pending(project: Path) -> None:
    manifest = write(project, manifest_text(("a", REPO_A, "never")))
    code, out, _ = cli("plan", "-f", str(manifest), "--detailed-exitcode")
    assert code == 2
    assert out == (
        "  + pull     model:mlx-test/tiny-a@main  not in the cache\n\nPlan: 1 to pull.\n"
    )
    code, out, _ = cli("plan", "-f", str(manifest), "--json")
    assert code == 0
    assert json.loads(out)["changes"] == [
        {"action": "pull", "target": "model:mlx-test/tiny-a@main", "reason": "not in the cache"}
    ]


def test_prune_removes_only_what_mlx_lama_pulled(
    project: Path, two_repos: HubStandIn, tiny_model: Path
) -> None:
    manifest = write(project, manifest_text(("a", REPO_A, "never"), ("b", REPO_B, "never")))
    assert cli("apply", "-f", str(manifest))[0] == 0
    place_in_cache(tiny_model, paths.hf_hub_cache(), "other-tool/model")
    write(project, manifest_text(("a", REPO_A, "never")))

    code, out, _ = cli("plan", "-f", str(manifest))
    assert (code, out) == (0, "No changes.\n")
    code, out, _ = cli("plan", "-f", str(manifest), "--prune")
    assert "- remove   model:mlx-test/tiny-b  no longer in the manifest" in out
    assert "other-tool" not in out

    code, out, err = cli("apply", "-f", str(manifest), "--prune", "--yes")
    assert code == 0, out + err
    assert "Removed 1 model" in out
    assert cached_repos() == {REPO_A, "other-tool/model"}
    assert [m.name for m in read_lock(project / "mlxlama.lock").models] == ["a"]


def test_destructive_actions_need_yes_without_a_terminal(
    project: Path, two_repos: HubStandIn
) -> None:
    manifest = write(project, manifest_text(("a", REPO_A, "never"), ("b", REPO_B, "never")))
    assert cli("apply", "-f", str(manifest))[0] == 0
    write(project, manifest_text(("a", REPO_A, "never")))
    code, out, err = cli("apply", "-f", str(manifest), "--prune")
    assert code == 1
    assert "- remove   model:mlx-test/tiny-b" in out  # the plan was shown
    assert "refused: remove model:mlx-test/tiny-b (not confirmed)" in err
    assert "--yes" in err
    assert REPO_B in cached_repos()


def test_a_missing_repo_fails_alone(project: Path, two_repos: HubStandIn) -> None:
    manifest = write(
        project, manifest_text(("a", REPO_A, "never"), ("ghost", "mlx-test/ghost", "never"))
    )
    code, out, err = cli("apply", "-f", str(manifest))
    assert code == 1
    assert "Pulled 1 model" in out
    assert "Failed: pull model:mlx-test/ghost@main" in err
    assert "mlx-test/ghost" in err.split("✗ pull model:mlx-test/ghost@main")[1]
    assert cached_repos() == {REPO_A}
    assert [m.name for m in read_lock(project / "mlxlama.lock").models] == ["a"]


def test_lock_and_apply_locked(project: Path, two_repos: HubStandIn, tiny_model: Path) -> None:
    manifest = write(project, manifest_text(("a", REPO_A, "never")))
    code, out, err = cli("apply", "-f", str(manifest), "--locked")
    assert code == 1
    assert "a is not locked" in err
    code, out, err = cli("lock", "-f", str(manifest))
    assert code == 0, out + err
    assert cached_repos() == set()  # lock downloads nothing
    first = read_lock(project / "mlxlama.lock").models[0].commit
    assert cli("apply", "-f", str(manifest), "--locked")[0] == 0
    assert cached_repos() == {REPO_A}

    new_commit = two_repos.add_repo(REPO_A, {**_files(tiny_model), "extra.json": b"{}"})
    assert cli("lock", "-f", str(manifest))[1].startswith("Locked 1 model (0 updated)")
    assert read_lock(project / "mlxlama.lock").models[0].commit == first
    code, out, _ = cli("lock", "-f", str(manifest), "--upgrade", "a")
    assert code == 0
    assert f"~ a  {first[:12]} -> {new_commit[:12]}" in out
    assert read_lock(project / "mlxlama.lock").models[0].commit == new_commit
    code, out, _ = cli("plan", "-f", str(manifest))
    assert f"locked commit {new_commit[:12]} not in the cache" in out


def test_list_shows_manifest_and_other_cached_models(
    project: Path, two_repos: HubStandIn, tiny_model: Path
) -> None:
    manifest = write(project, manifest_text(("a", REPO_A, "never"), ("b", REPO_B, "never")))
    cli("apply", "-f", str(manifest))
    place_in_cache(tiny_model, paths.hf_hub_cache(), "other-tool/model")
    write(project, manifest_text(("a", REPO_A, "never"), ("later", "mlx-test/later", "never")))
    code, out, _ = cli("list", "-f", str(manifest))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "ID", "SIZE", "MODIFIED", "STATUS"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows["a"].rstrip().endswith("in manifest")
    assert rows["later"].rstrip().endswith("not pulled")
    assert rows["other-tool/model"].rstrip().endswith("not in manifest")
    assert rows[REPO_B].rstrip().endswith("not in manifest")
    code, out, _ = cli("list", "-f", str(manifest), "--json")
    entries = {e["name"]: e for e in json.loads(out)}
    assert entries["a"]["size"] > 0 and len(entries["a"]["commit"]) == 40
    assert entries["later"]["size"] == 0


@pytest.mark.server
def test_always_served_model_is_started_tracked_and_stopped(
    project: Path, published_model: object
) -> None:
    manifest = write(project, manifest_text(("tiny", "mlx-test/tiny-llama", "always")))
    code, out, err = cli("apply", "-f", str(manifest), "--timeout", "120")
    assert code == 0, out + err
    assert re.search(r'\+ start\s+server:tiny\s+serve = "always"', out), out
    assert "Pulled 1 model, started 1 server" in out
    code, out, _ = cli("ps", "--json")
    [row] = json.loads(out)
    assert (row["name"], row["backend"], row["state"]) == ("tiny", "mlx-lm", "running")
    assert row["memory"] > 0 and row["uptime"] >= 0
    # what the memory budget counts it as: the tiny weights, 64 MiB of KV cache, the margin
    assert 320 * 2**20 < row["estimate"] < 330 * 2**20
    assert cli("plan", "-f", str(manifest), "--detailed-exitcode")[0] == 0
    assert "served" in cli("list", "-f", str(manifest))[1]

    write(project, manifest_text(("tiny", "mlx-test/tiny-llama", "never")))
    code, out, err = cli("apply", "-f", str(manifest), "--yes")
    assert code == 0, out + err
    assert re.search(r'- stop\s+server:tiny\s+serve = "never" in the manifest', out), out
    assert json.loads(cli("ps", "--json")[1]) == []
    assert not _alive(row["pid"])


def _alive(pid: int) -> bool:
    import psutil

    return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


def test_ctrl_c_mid_pull_leaves_nothing_taken_for_complete(
    project: Path, hub: HubStandIn, tiny_model: Path
) -> None:
    files = _files(tiny_model)
    # Over 10 MiB: huggingface_hub writes partial files in 10 MiB steps, so the
    # partial blob is visible once 11 MiB have arrived, where the hub holds it.
    files["model.safetensors"] = files["model.safetensors"] + b"\0" * (12 * 2**20)
    hub.add_repo(REPO_A, files)
    hub.hold_downloads("model.safetensors", after_bytes=11 * 2**20)
    manifest = write(project, manifest_text(("a", REPO_A, "never")))
    argv = [sys.executable, "-m", "mlx_lama", "apply", "-f", str(manifest)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as apply:
        try:
            deadline = time.monotonic() + 60
            while not _download_started() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _download_started(), "the pull never reached the weights"
            apply.send_signal(signal.SIGINT)
            _out, err = apply.communicate(timeout=60)
        finally:
            hub.release()
            if apply.poll() is None:
                apply.kill()
    assert apply.returncode == 130
    assert "interrupted" in err and "Traceback" not in err
    assert "✓ pull" not in err  # stopped mid-download, not after it
    assert not (project / "mlxlama.lock").exists()
    [snapshot] = (paths.hf_hub_cache() / "models--mlx-test--tiny-a" / "snapshots").iterdir()
    assert not (snapshot / "model.safetensors").exists()
    assert "+ pull     model:mlx-test/tiny-a@main" in cli("plan", "-f", str(manifest))[1]
    assert cli("apply", "-f", str(manifest))[0] == 0
    assert read_lock(project / "mlxlama.lock").models[0].name == "a"


def _download_started() -> bool:
    """A partial blob exists: huggingface_hub is writing the weights right now."""
    blobs = paths.hf_hub_cache() / "models--mlx-test--tiny-a" / "blobs"
    return blobs.is_dir() and any(_size(p) > 0 for p in blobs.glob("*.incomplete"))


def _size(path: Path) -> int:
    """The file's size; 0 once it is gone (a partial blob is renamed when complete)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def test_dry_run_shows_the_plan_and_changes_nothing(project: Path, two_repos: HubStandIn) -> None:
    manifest = write(project, manifest_text(("a", REPO_A, "never")))
    two_repos.clear_log()
    code, out, _ = cli("apply", "-f", str(manifest), "--dry-run")
    assert (code, out) == (
        0,
        "  + pull     model:mlx-test/tiny-a@main  not in the cache\n\nPlan: 1 to pull.\n",
    )
    assert two_repos.request_log == []
    assert cached_repos() == set()
    assert not (project / "mlxlama.lock").exists()


def test_lock_refuses_unknown_or_misused_model_names(project: Path, two_repos: HubStandIn) -> None:
    manifest = write(project, manifest_text(("a", REPO_A, "never")))
    code, _out, err = cli("lock", "-f", str(manifest), "--upgrade", "nope")
    assert code == 1
    assert "not in the manifest: nope" in err
    code, _out, err = cli("lock", "-f", str(manifest), "a")
    assert code == 2
    assert "--upgrade" in err
    assert not (project / "mlxlama.lock").exists()


@pytest.mark.server
@pytest.mark.engine("vllm-mlx")
def test_both_engines_serve_and_a_model_switches_backend(
    project: Path, published_model: object
) -> None:
    ports = {"a": free_port(), "b": free_port()}

    def entries(a_backend: str) -> str:
        return (
            f'version = 1\n[models.a]\nrepo = "mlx-test/tiny-llama"\nserve = "always"\n'
            f'backend = "{a_backend}"\nport = {ports["a"]}\n'
            f'[models.b]\nrepo = "mlx-test/tiny-llama"\nserve = "always"\n'
            f'backend = "vllm-mlx"\nport = {ports["b"]}\n'
        )

    manifest = write(project, entries("mlx-lm"))
    code, out, err = cli("apply", "-f", str(manifest), "--timeout", "180")
    assert code == 0, out + err
    servers = {row["name"]: row for row in json.loads(cli("ps", "--json")[1])}
    assert {n: (s["backend"], s["port"]) for n, s in servers.items()} == {
        "a": ("mlx-lm", ports["a"]),
        "b": ("vllm-mlx", ports["b"]),
    }
    assert _chat(ports["a"], None) and _chat(ports["b"], "b")

    write(project, entries("vllm-mlx"))
    code, out, err = cli("apply", "-f", str(manifest), "--timeout", "180")
    assert code == 0, out + err
    assert re.search(r"~ restart\s+server:a\s+changed: engine", out), out
    after = {row["name"]: row for row in json.loads(cli("ps", "--json")[1])}
    assert after["a"]["backend"] == "vllm-mlx"
    assert after["a"]["port"] == ports["a"] and after["a"]["pid"] != servers["a"]["pid"]
    assert after["b"]["pid"] == servers["b"]["pid"]  # untouched
    assert not _alive(servers["a"]["pid"])
    assert _chat(ports["a"], "a")

    write(project, "version = 1\n")
    code, out, err = cli("apply", "-f", str(manifest), "--yes")
    assert code == 0, out + err
    assert json.loads(cli("ps", "--json")[1]) == []
    assert not any(_alive(row["pid"]) for row in after.values())


def _chat(port: int, model: str | None) -> str:
    """A non-empty chat completion from the server on ``port``."""
    body: dict[str, object] = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    if model is not None:
        body["model"] = model
    reply = httpx.post(
        f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=120, trust_env=False
    )
    assert reply.status_code == 200, reply.text
    content = str(reply.json()["choices"][0]["message"]["content"])
    assert content.strip()
    return content
