"""Two projects, A and B, under one MLX_LAMA_HOME and one Hugging Face cache, with a
real mlx_lm server and real files: nothing B does stops A's servers or deletes a file
A's manifest or lock names; an orphan is stopped only when asked; a daemon takes
over at once a server `apply` started for a model it had given up on."""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from mlx_lama import paths
from mlx_lama.orchestrator import policy, process, pulled, runrecords
from mlx_lama.orchestrator.cache import scan_cache
from mlx_lama.orchestrator.daemonfile import daemon_file
from mlx_lama.orchestrator.projects import project_key
from mlx_lama.orchestrator.reconcile import reconcile
from mlx_lama.orchestrator.state import RunRecord
from tests.conftest import TINY_REPO_ID
from tests.fixtures.cli import cli
from tests.fixtures.gateway import gateway_in_thread, wait_for
from tests.fixtures.hf_cache import place_in_cache
from tests.fixtures.hub import HubStandIn
from tests.fixtures.servers import free_port, start_server

REPO_X = "mlx-test/tiny-x"  # A's, later named only by A's lock
REPO_B = "mlx-test/tiny-b"  # B's own
MISSING = '\n[models.tiny-a]\npath = "{}/nowhere"\nserve = "never"\n'


def write(folder: Path, *entries: tuple[str, str], extra: str = "") -> Path:
    """A manifest in ``folder`` with ``(name, "key = value" lines)`` models."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mlxlama.toml"
    body = "".join(f'\n[models."{name}"]\n{fields}\n' for name, fields in entries)
    path.write_text("version = 1\n" + body + extra)
    return path


def repo(repo_id: str, serve: str = "never") -> str:
    return f'repo = "{repo_id}"\nserve = "{serve}"'


def cached_repos() -> set[str]:
    return {r.repo_id for r in scan_cache(paths.hf_hub_cache())[0]}


def alive(pid: int) -> bool:
    return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


@pytest.fixture(autouse=True)
def no_servers_left() -> Iterator[None]:
    """Whatever a test started is stopped afterwards, by PID."""
    try:
        yield
    finally:
        for record in runrecords.read_records()[0]:
            process.stop_server(record)


@pytest.mark.server
def test_another_project_never_stops_prunes_or_deletes_what_a_declares(
    tmp_path: Path, published_model: object, hub: HubStandIn, tiny_model: Path
) -> None:
    hub.add_repo(REPO_X, tiny_model)
    hub.add_repo(REPO_B, tiny_model)
    a = write(tmp_path / "a", ("tiny-a", repo(TINY_REPO_ID, "always")), ("x", repo(REPO_X)))
    code, out, err = cli("apply", "-f", str(a), "--timeout", "120")
    assert code == 0, out + err
    [record] = runrecords.read_records()[0]
    assert record.name == "tiny-a"

    _b_plans_applies_and_lists_beside_a(tmp_path, a, record)
    _b_prunes_only_its_own(tmp_path, a)
    _b_removes_a_model_whose_files_a_names(tmp_path, a)
    assert alive(record.pid)
    assert runrecords.read_records()[0] == [record]
    assert cli("plan", "-f", str(a))[1] == "No changes.\n"
    _an_orphan_is_stopped_only_with_remove_orphans(tmp_path, a, record)


def _b_plans_applies_and_lists_beside_a(tmp_path: Path, a: Path, record: RunRecord) -> None:
    # B has a model of its own, and a "tiny-a" whose folder does not exist.
    b = write(tmp_path / "b", ("b", repo(REPO_B)), extra=MISSING.format(tmp_path))
    code, out, err = cli("plan", "-f", str(b))
    assert code == 0, out + err
    assert "stop" not in out and "tiny-a" not in out, out
    code, out, err = cli("apply", "-f", str(b), "--yes")
    assert code == 0, out + err
    assert "server:tiny-a" not in out, out
    assert alive(record.pid)
    assert runrecords.read_records()[0] == [record]

    # ps lists every project's servers; --project only the one in use.
    code, out, _ = cli("ps", "-f", str(b))
    assert code == 0
    header, line = out.splitlines()[:2]
    assert header.split()[:3] == ["NAME", "PROJECT", "BACKEND"]
    assert line.split()[:3] == ["tiny-a", "a", "mlx-lm"]
    assert json.loads(cli("ps", "--project", "-f", str(b), "--json")[1]) == []
    [row] = json.loads(cli("ps", "--project", "-f", str(a), "--json")[1])
    assert (row["name"], row["project"], row["project_name"]) == ("tiny-a", str(a), "a")


def _b_prunes_only_its_own(tmp_path: Path, a: Path) -> None:
    # B drops its model; A drops x from its manifest, but A's lock still names it,
    # and x's ledger entry is as 0.1.0 wrote it (no project), so only A's lock
    # protects x. A's served repo is A's own pull.
    b = write(tmp_path / "b", extra=MISSING.format(tmp_path))
    write(tmp_path / "a", ("tiny-a", repo(TINY_REPO_ID, "always")))
    ledger = json.loads(pulled.pulled_file().read_text())
    assert ledger["repos"][REPO_X].pop("projects") == [project_key(a)]
    pulled.pulled_file().write_text(json.dumps(ledger))
    code, out, err = cli("plan", "-f", str(b), "--prune")
    assert code == 0, out + err
    assert f"- remove   model:{REPO_B}" in out, out
    assert f"note: kept model:{REPO_X}: project a ({a}) names it" in out, out
    assert f"note: kept model:{TINY_REPO_ID}: another project pulled it" in out, out
    code, out, err = cli("apply", "-f", str(b), "--prune", "--yes")
    assert code == 0, out + err
    assert cached_repos() == {TINY_REPO_ID, REPO_X}


def _b_removes_a_model_whose_files_a_names(tmp_path: Path, a: Path) -> None:
    # B uses the repo A serves under a name of its own, then removes it: the files stay.
    b = write(tmp_path / "b", ("e", repo(TINY_REPO_ID)))
    assert cli("apply", "-f", str(b))[0] == 0
    code, out, err = cli("rm", "e", "-f", str(b))
    assert code == 0, out + err
    assert f"kept its files: project a ({a}) names it" in err
    assert TINY_REPO_ID in cached_repos()


def _an_orphan_is_stopped_only_with_remove_orphans(
    tmp_path: Path, a: Path, record: RunRecord
) -> None:
    # A's manifest goes away: its server is an orphan. B's plan says so, and its
    # files stay while the server runs. Only --remove-orphans stops it.
    a.rename(a.with_name("elsewhere.toml"))
    b = write(tmp_path / "b", ("e", repo(TINY_REPO_ID)))
    code, out, err = cli("apply", "-f", str(b), "--yes")
    assert code == 0, out + err
    assert f"note: server:tiny-a (pid {record.pid}) is an orphan: its project's manifest" in out
    code, out, err = cli("rm", "e", "-f", str(b))
    assert code == 0, out + err
    assert f"kept its files: server tiny-a of project a (pid {record.pid}) uses it" in err
    assert alive(record.pid)
    code, out, err = cli("apply", "-f", str(b), "--remove-orphans", "--yes")
    assert code == 0, out + err
    assert "- stop     server:tiny-a  orphan: its project's manifest" in out, out
    assert "Stopped 1 server" in out
    assert not alive(record.pid)
    assert runrecords.read_records()[0] == []


@pytest.mark.server
def test_another_projects_daemon_neither_adopts_nor_stops_a_server_of_the_same_name(
    tmp_path: Path, published_model: object
) -> None:
    a = write(tmp_path / "a", ("tiny-a", repo(TINY_REPO_ID, "always")))
    assert cli("apply", "-f", str(a), "--timeout", "120")[0] == 0
    [record] = runrecords.read_records()[0]
    # B serves a model of the same name from the same files: the same launch spec.
    b = write(tmp_path / "b", ("tiny-a", repo(TINY_REPO_ID, "on-demand")))
    code, out, err = cli("apply", "-f", str(b))
    assert code == 0, out + err
    port = free_port()
    env = {**os.environ, "MLX_LAMA_HOST": f"127.0.0.1:{port}"}
    daemon = start_server(
        [sys.executable, "-m", "mlx_lama", "serve", "-f", str(b)],
        port=port,
        log_path=tmp_path / "daemon-b.log",
        env=env,
    )
    try:
        daemon.wait_ready("/", 120)
        reply = httpx.post(
            f"{daemon.url}/api/generate",
            json={
                "model": "tiny-a",
                "prompt": "hi",
                "stream": False,
                "options": {"num_predict": 2},
            },
            timeout=120,
        )
        assert reply.status_code == 409, reply.text  # a conflict, not the engine's failure
        assert "is already running for another project" in reply.text, reply.text
        assert "rename the model" in reply.text
        assert alive(record.pid)
    finally:
        assert daemon.stop(timeout=60) == 0  # stops the on-demand servers it runs
    assert alive(record.pid)
    assert runrecords.read_records()[0] == [record]


def test_api_delete_keeps_files_another_project_names_and_says_why(
    tmp_path: Path, tiny_model: Path
) -> None:
    cache = paths.hf_hub_cache()
    for repo_id in (REPO_X, REPO_B):
        place_in_cache(tiny_model, cache, repo_id)
    a = write(tmp_path / "a", ("x", repo(REPO_X)))
    pulled.record_pulled(REPO_X, project=project_key(a))
    pulled.record_pulled(REPO_B, project=project_key(a))
    cli("apply", "-f", str(a))  # A is a known project now
    b = write(tmp_path / "b", ("shared", repo(REPO_X)), ("mine", repo(REPO_B)))
    with gateway_in_thread(b) as running:
        reply = httpx.request("DELETE", f"{running.url}/api/delete", json={"model": "shared"})
        assert reply.status_code == 200, reply.text
        assert reply.json() == {"status": "success", "kept_files": f"project a ({a}) names it"}
        reply = httpx.request("DELETE", f"{running.url}/api/delete", json={"model": "mine"})
        assert reply.status_code == 200, reply.text
        assert reply.json() == {"status": "success"}
    assert cached_repos() == {REPO_X}
    assert "shared" not in b.read_text() and "mine" not in b.read_text()


@pytest.mark.server
def test_apply_has_the_daemon_try_again_a_model_it_gave_up_on(
    tmp_path: Path, published_model: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(policy, "MAX_FAILURES", 1)  # give up on the first failure
    port = free_port()
    fields = f'repo = "{TINY_REPO_ID}"\nport = {port}\nserve = '
    manifest = write(tmp_path / "a", ("tiny", fields + '"never"'))
    reconcile(manifest, cache_dir=paths.hf_hub_cache())  # pulls and locks it
    write(tmp_path / "a", ("tiny", fields + '"always"'))
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))  # the engine cannot listen: its start fails
        squatter.listen()
        with gateway_in_thread(manifest) as running, daemon_file(running.url, manifest):

            def health() -> dict[str, object]:
                entry: dict[str, object] = httpx.get(f"{running.url}/health").json()["models"]
                return entry["tiny"]  # type: ignore[return-value]

            wait_for(lambda: health()["state"] == "failed", 120, "the daemon to give up")
            squatter.close()
            # The daemon serves this manifest: apply hands it the start and waits.
            code, out, err = cli("apply", "-f", str(manifest), "--timeout", "120")
            assert code == 0, out + err
            assert "Started 1 server" in out and "by the daemon" in err
            assert health()["state"] == "ready"
            [record] = runrecords.read_records()[0]
            assert health()["pid"] == record.pid  # the daemon's own server, the only one
            reply = httpx.post(
                f"{running.url}/api/generate",
                json={"model": "tiny", "prompt": "hi", "stream": False,
                      "options": {"num_predict": 2}},
                timeout=60,
            )  # fmt: skip
            assert reply.status_code == 200, reply.text
            assert [r.pid for r in runrecords.read_records()[0]] == [record.pid]
