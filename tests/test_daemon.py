"""The daemon keeps the machine matching the manifest: hot reload, crash restarts, shutdown.

Each test runs ``mlx-lama serve`` as a subprocess (the watcher and the signal
handling are the daemon's own) on the tiny model, edits the manifest the way
editors save it, and watches PIDs through ``/health`` and the run records.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from dataclasses import replace
from pathlib import Path

import httpx
import psutil
import pytest
from pytest import MonkeyPatch

from mlx_lama import paths
from mlx_lama.orchestrator import process, runrecords
from mlx_lama.orchestrator.desired import desired
from mlx_lama.orchestrator.policy import MAX_FAILURES
from mlx_lama.schema import load_manifest
from mlx_lama.schema.lockfile import read_lock
from mlx_lama.timings import TIMINGS_ENV
from tests.conftest import PublishedRepo
from tests.fixtures.cli import cli
from tests.fixtures.gateway import RunningGateway, gateway_in_thread, gateway_process, wait_for
from tests.test_runrecords import SLEEP, procs, record_for, spawn

__all__ = ["procs"]  # the fixture, shared with test_runrecords

READY = 120.0  # s a (re)started tiny server may take here, generously


def _save(path: Path, text: str) -> None:
    """Save the way most editors do: write a temporary file, then rename it over."""
    temporary = path.with_name(f".{path.name}.swp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)


def _chat(gateway: RunningGateway, model: str) -> httpx.Response:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hello"}],
        "stream": False,
        "options": {"num_predict": 2},
    }
    with httpx.Client(trust_env=False, timeout=READY) as client:
        return client.post(gateway.url + "/api/chat", json=body)


def _model(gateway: RunningGateway, name: str) -> dict[str, object]:
    models = gateway.health()["models"]
    assert isinstance(models, dict)
    entry = models.get(name)
    return entry if isinstance(entry, dict) else {}


def _pid(gateway: RunningGateway, name: str) -> object:
    return _model(gateway, name).get("pid")


def _ready_pid(gateway: RunningGateway, name: str) -> int:
    wait_for(lambda: _model(gateway, name).get("state") == "ready", READY, f"{name} ready")
    pid = _pid(gateway, name)
    assert isinstance(pid, int)
    return pid


def _manifest(tiny_model: Path, *, extra: str = "", a_env: str = "") -> str:
    env = f"env = {{ {a_env} }}\n" if a_env else ""
    return (
        "version = 1\n\n"
        "# the model that must stay up\n"
        f'[models.a]\npath = "{tiny_model}"\nserve = "always"\n{env}'
        f"{extra}"
    )


def _model_b(tiny_model: Path, serve: str | None = None) -> str:
    """A second model's table, to add to :func:`_manifest` (on-demand unless ``serve``)."""
    mode = f'serve = "{serve}"\n' if serve is not None else ""
    return f'\n[models.b]\npath = "{tiny_model}"\n{mode}'


def test_reload_is_diff_aware_and_survives_a_bad_save(tiny_model: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(_manifest(tiny_model), encoding="utf-8")
    with gateway_process(manifest, log_path=tmp_path / "daemon.log") as daemon:
        a_pid = _ready_pid(daemon, "a")

        # Adding a model and an alias: B answers, A is untouched.
        with_b = _model_b(tiny_model) + '\n[aliases]\nhelper = "b"\n'
        _save(manifest, _manifest(tiny_model, extra=with_b))
        wait_for(lambda: "b" in daemon.health()["models"], 10, "model b to be routed")  # type: ignore[operator]
        answer = _chat(daemon, "helper")
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == "helper"
        b_pid = _ready_pid(daemon, "b")
        assert _pid(daemon, "a") == a_pid

        # An alias change restarts nothing.
        moved = with_b.replace('helper = "b"', 'helper = "a"\nsidekick = "b"')
        _save(manifest, _manifest(tiny_model, extra=moved))
        wait_for(lambda: _chat(daemon, "sidekick").status_code == 200, 10, "the new alias")
        assert _pid(daemon, "a") == a_pid and _pid(daemon, "b") == b_pid

        # A launch setting of A restarts A only; the old server answers until the
        # new one is ready (no fixed port here, and memory enough for both).
        old_a = a_pid
        _save(manifest, _manifest(tiny_model, extra=moved, a_env='MLX_LAMA_TEST = "1"'))
        wait_for(lambda: _model(daemon, "a").get("state") == "starting", 10, "a's successor")
        during = _chat(daemon, "a")
        assert during.status_code == 200, during.text
        assert _model(daemon, "a").get("state") == "starting"  # answered by the old one
        assert psutil.pid_exists(old_a)
        wait_for(lambda: _pid(daemon, "a") not in (old_a, None), READY, "a to restart")
        a_pid = _ready_pid(daemon, "a")
        run = daemon.home / "run"
        wait_for(lambda: not list(run.glob("*@@next.json")), 60, "the successor's record")
        assert not psutil.pid_exists(old_a)
        assert (run / "a.json").exists()
        assert _pid(daemon, "b") == b_pid
        assert _chat(daemon, "a").status_code == 200

        # Invalid TOML: reported with file:line, nothing stops, A keeps answering.
        reloads = daemon.health()["reloads"]
        _save(manifest, _manifest(tiny_model, extra=moved) + "\n[models.c\npath = 1\n")
        wait_for(lambda: "manifest_error" in daemon.health(), 10, "the manifest error")
        health = daemon.health()
        assert health["status"] == "degraded"
        assert f"{manifest.name}:" in str(health["manifest_error"])
        assert str(health["manifest_error_since"]).endswith("Z")
        assert health["reloads"] == reloads
        assert _chat(daemon, "a").status_code == 200
        assert _pid(daemon, "a") == a_pid and _pid(daemon, "b") == b_pid

        # Deleting the manifest tears nothing down either.
        manifest.unlink()
        wait_for(lambda: "gone" in str(daemon.health().get("manifest_error")), 10, "deletion")
        assert _chat(daemon, "sidekick").status_code == 200

        # The fix (delete-then-recreate) applies.
        fixed = moved + '\n[models.c]\npath = "' + str(tiny_model) + '"\n'
        manifest.write_text(_manifest(tiny_model, extra=fixed, a_env='MLX_LAMA_TEST = "1"'))
        wait_for(lambda: "manifest_error" not in daemon.health(), 10, "the fix to apply")
        assert "c" in daemon.health()["models"]  # type: ignore[operator]
        assert _pid(daemon, "a") == a_pid and _pid(daemon, "b") == b_pid
        assert "# the model that must stay up" in manifest.read_text()


def test_a_killed_server_comes_back_and_requests_wait_for_it(
    tiny_model: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(_manifest(tiny_model), encoding="utf-8")
    with gateway_process(manifest, log_path=tmp_path / "daemon.log") as daemon:
        old = _ready_pid(daemon, "a")
        os.kill(old, signal.SIGKILL)
        answer = _chat(daemon, "a")  # sent during the outage: waits for the restart
        assert answer.status_code == 200, answer.text
        new = _ready_pid(daemon, "a")
        assert new != old and not psutil.pid_exists(old)
        assert _model(daemon, "a").get("failures") == 1


def test_a_hung_server_fails_its_liveness_probe_and_is_restarted(
    tiny_model: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(_manifest(tiny_model), encoding="utf-8")
    env = {**os.environ, "MLX_LAMA_PROBE_INTERVAL": "1", TIMINGS_ENV: "min_probe_timeout=1"}
    with gateway_process(manifest, log_path=tmp_path / "daemon.log", env=env) as daemon:
        hung = _ready_pid(daemon, "a")
        os.kill(hung, signal.SIGSTOP)  # alive, port open, answers nothing
        wait_for(lambda: _pid(daemon, "a") not in (hung, None), READY, "a to be replaced")
        assert _ready_pid(daemon, "a") != hung
        assert not psutil.pid_exists(hung)
        assert _model(daemon, "a").get("failures") == 1
        assert daemon.process is not None
        assert "failed its liveness probe" in daemon.process.log_tail()
        assert _chat(daemon, "a").status_code == 200


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("MLX_LAMA_PROBE_INTERVAL", "soon", "MLX_LAMA_PROBE_INTERVAL='soon'"),
        ("MLX_LAMA_TIMINGS", "drain=soon", "MLX_LAMA_TIMINGS: 'drain=soon'"),
    ],
)
def test_bad_timing_variable_is_a_usage_error(
    tmp_path: Path, monkeypatch: MonkeyPatch, variable: str, value: str, said: str
) -> None:
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text("version = 1\n", encoding="utf-8")
    monkeypatch.setenv(variable, value)
    code, _out, err = cli("serve", "-f", str(manifest))
    assert code == 2 and said in err and "Traceback" not in err


def test_sigterm_stops_on_demand_servers_and_keeps_always_ones(
    tiny_model: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "mlxlama.toml"
    extra = _model_b(tiny_model, serve="on-demand")
    manifest.write_text(_manifest(tiny_model, extra=extra), encoding="utf-8")
    with gateway_process(manifest, log_path=tmp_path / "daemon.log") as daemon:
        always = _ready_pid(daemon, "a")
        streaming = threading.Thread(target=_chat, args=(daemon, "b"))
        streaming.start()
        on_demand = _ready_pid(daemon, "b")
        streaming.join(READY)
        assert daemon.process is not None
        daemon.process.process.send_signal(signal.SIGTERM)
        assert daemon.process.process.wait(60) == 0
        assert not psutil.pid_exists(on_demand) or (
            psutil.Process(on_demand).status() == psutil.STATUS_ZOMBIE
        )
        assert psutil.pid_exists(always)  # "always" servers outlive the daemon
        assert not (daemon.home / "daemon.json").exists()


def test_sigterm_with_stop_all_on_exit_stops_always_servers_too(
    tiny_model: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(_manifest(tiny_model), encoding="utf-8")
    with gateway_process(
        manifest, log_path=tmp_path / "daemon.log", args=("--stop-all-on-exit",)
    ) as daemon:
        always = _ready_pid(daemon, "a")
        assert daemon.process is not None
        daemon.process.process.send_signal(signal.SIGTERM)
        assert daemon.process.process.wait(60) == 0
        wait_for(lambda: not psutil.pid_exists(always), 10, "the always server to stop")
        assert not list((daemon.home / "run").glob("*.json"))


def test_a_server_that_keeps_failing_is_marked_failed_until_the_manifest_changes(
    tiny_model: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "mlxlama.toml"
    broken = tmp_path / "not-there"  # every start fails at once: no model folder
    body = 'version = 1\n\n[models.a]\npath = "{}"\nserve = "always"\n'
    manifest.write_text(body.format(broken), encoding="utf-8")
    env = {**os.environ, TIMINGS_ENV: "first_backoff=50ms"}  # not 1 + 2 + 4 + 8 s
    with gateway_process(manifest, log_path=tmp_path / "daemon.log", env=env) as daemon:
        wait_for(lambda: _model(daemon, "a").get("state") == "failed", 60, "a to be given up")
        assert _model(daemon, "a").get("failures") == MAX_FAILURES
        refused = _chat(daemon, "a")
        assert refused.status_code == 503
        assert "failed 5 times" in refused.json()["error"]
        code, out, _err = cli("ps")
        assert code == 0
        assert "failed" in out and "does not exist" in out

        _save(manifest, body.format(tiny_model))  # the fix is the retry
        _ready_pid(daemon, "a")
        assert _chat(daemon, "a").status_code == 200


def test_records_of_dead_servers_are_dropped_on_start(
    tiny_model: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    manifest = tmp_path / "mlxlama.toml"
    extra = _model_b(tiny_model)  # on-demand: nothing starts it
    manifest.write_text(_manifest(tiny_model, extra=extra), encoding="utf-8")
    dead = spawn(procs, SLEEP)
    stale = record_for(dead, name="b", model="b", manifest=str(manifest))  # this project's
    dead.kill()
    dead.wait()
    path = runrecords.write_record(stale)
    with gateway_process(manifest, log_path=tmp_path / "daemon.log") as daemon:
        _ready_pid(daemon, "a")
        assert not path.exists()
        assert _model(daemon, "b").get("state") == "stopped"


def test_a_model_added_from_the_hub_is_pulled_then_served(
    published_model: PublishedRepo, tmp_path: Path
) -> None:
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text("version = 1\n", encoding="utf-8")
    with gateway_process(manifest, log_path=tmp_path / "daemon.log") as daemon:
        _save(manifest, f'version = 1\n\n[models.hubbed]\nrepo = "{published_model.repo_id}"\n')
        wait_for(lambda: _model(daemon, "hubbed").get("state") == "stopped", 60, "the pull")
        locked = read_lock(manifest.with_name("mlxlama.lock")).get("hubbed")
        assert locked is not None and locked.commit == published_model.commit
        answer = _chat(daemon, "hubbed")
        assert answer.status_code == 200, answer.text


def test_a_server_started_meanwhile_by_apply_is_taken_over_or_replaced(
    tiny_model: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "mlxlama.toml"
    extra = _model_b(tiny_model)  # on-demand
    manifest.write_text(_manifest(tiny_model, extra=extra), encoding="utf-8")
    wanted = desired(
        load_manifest(manifest),
        read_lock(manifest.with_name("mlxlama.lock")),
        manifest_dir=tmp_path,
        cache_dir=paths.hf_hub_cache(),
    )
    spec = next(s for s in wanted.servers if s.name == "b")
    with gateway_process(manifest, log_path=tmp_path / "daemon.log") as daemon:
        _ready_pid(daemon, "a")
        # Started behind the daemon's back from the same spec (as `apply` would):
        # the first request for it uses that server instead of failing to start one.
        same = process.start_server(spec, manifest=str(manifest))
        assert _chat(daemon, "b").status_code == 200
        assert _pid(daemon, "b") == same.pid
        assert _model(daemon, "b").get("failures") is None

        # One from another spec is stale: stopped, and the daemon starts its own.
        _save(manifest, _manifest(tiny_model, extra=extra + 'keep_alive = "1s"\n'))
        wait_for(lambda: _model(daemon, "b").get("state") == "stopped", 30, "b to unload")
        # (a child of this test: exited() reaps it, so it is not left a zombie)
        wait_for(lambda: process.exited(same) is not None, 30, "the first b to stop")
        stale = process.start_server(
            replace(spec, env=(("MLX_LAMA_TEST", "1"),)), manifest=str(manifest)
        )
        assert _chat(daemon, "b").status_code == 200
        assert _pid(daemon, "b") not in (stale.pid, None)
        assert process.exited(stale) is not None


def test_api_key_and_origins_changes_apply_without_a_restart(tmp_path: Path) -> None:
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text("version = 1\n", encoding="utf-8")
    with gateway_in_thread(manifest) as running, httpx.Client(trust_env=False) as http:
        tags = running.url + "/api/tags"
        assert http.get(tags).status_code == 200
        _save(manifest, 'version = 1\n\n[server]\napi_key = "sesame"\n')
        wait_for(lambda: http.get(tags).status_code == 401, 10, "the key to apply")
        keyed = http.get(tags, headers={"Authorization": "Bearer sesame"})
        assert keyed.status_code == 200

        origin = {"Origin": "https://app.example"}
        foreign = http.get(tags, headers={**origin, "Authorization": "Bearer sesame"})
        assert foreign.status_code == 403
        _save(manifest, 'version = 1\n\n[server]\norigins = ["https://app.example"]\n')
        wait_for(lambda: http.get(tags, headers=origin).status_code == 200, 10, "the origin")


def test_a_removed_model_stays_in_health_until_its_server_has_stopped(
    tiny_model: Path, tmp_path: Path
) -> None:
    """What `mlx-lama rm` waits on: the entry goes only once the process has."""
    manifest = tmp_path / "mlxlama.toml"
    with_b = _model_b(tiny_model, serve="always")
    manifest.write_text(_manifest(tiny_model, extra=with_b), encoding="utf-8")
    with gateway_process(manifest, log_path=tmp_path / "daemon.log") as daemon:
        _ready_pid(daemon, "a")
        b_pid = _ready_pid(daemon, "b")
        # minutes of tokens if nothing cancels them
        body = {"model": "b", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        body["max_tokens"] = 200000
        with (
            httpx.Client(trust_env=False, timeout=READY) as client,
            client.stream("POST", daemon.url + "/v1/chat/completions", json=body) as answer,
        ):
            lines = answer.iter_lines()
            assert '"content"' in next(line for line in lines if line.startswith("data:"))
            # b is busy: its removal waits for this request
            _save(manifest, _manifest(tiny_model))
            wait_for(lambda: _model(daemon, "b").get("removed") is True, 10, "the reload")
            assert psutil.pid_exists(b_pid)
            assert _model(daemon, "b").get("pid") == b_pid, _model(daemon, "b")
        # The stream is closed: b stops; while health lists it, its process may live,
        # and once health drops it, the process is gone.
        wait_for(lambda: _model(daemon, "b") == {}, 60, "b to go from health")
        assert not psutil.pid_exists(b_pid) or psutil.Process(b_pid).status() == "zombie"
        assert _model(daemon, "a").get("state") == "ready"
