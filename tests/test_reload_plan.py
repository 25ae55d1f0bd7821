"""The daemon's hot reload and ``mlx-lama plan`` decide with the same planner.

Servers started by ``apply`` from one manifest are adopted by a daemon's
gateway; the manifest then changes (one launch spec edited, one model
removed, one added). ``mlx-lama plan`` and the daemon's reload of that same
change must render the same plan, and the daemon's scheduler must act on
exactly the servers that plan names.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from mlx_lama import paths
from mlx_lama.gateway.server import prepare
from mlx_lama.orchestrator.plan import ActionKind
from mlx_lama.orchestrator.reconcile import reconcile
from mlx_lama.orchestrator.supervisor import Supervisor
from tests.fixtures.cli import cli
from tests.fixtures.gateway import gateway_in_thread, reap_servers

READY = 120.0  # s a tiny server may take to start here, generously


def _manifest(tiny_model: Path, *models: tuple[str, str]) -> str:
    """A manifest serving the tiny model ``always`` under each name, with its env."""
    text = "version = 1\n"
    for name, env in models:
        text += f'\n[models.{name}]\npath = "{tiny_model}"\nserve = "always"\n'
        if env:
            text += f"env = {{ {env} }}\n"
    return text


@pytest.mark.server  # `apply` starts the engines in this process
def test_a_hot_reload_plans_what_mlx_lama_plan_shows(tiny_model: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(_manifest(tiny_model, ("a", ""), ("b", "")), encoding="utf-8")
    home = paths.home()
    try:
        started = reconcile(manifest, cache_dir=paths.hf_hub_cache(), ready_timeout=READY)
        assert started is not None and started.ok
        gateway = prepare(manifest, cache_dir=paths.hf_hub_cache(), ready_timeout=READY)
        assert {s.name for s in gateway.scheduler.loaded()} == {"a", "b"}  # adopted

        # a's launch spec changes, b goes, c arrives.
        changed = _manifest(tiny_model, ("a", 'MLX_LAMA_TEST = "1"'), ("c", ""))
        manifest.write_text(changed, encoding="utf-8")
        code, shown, _ = cli("plan", "-f", str(manifest))
        assert code == 0, shown

        supervisor = Supervisor(gateway, probe_interval=0)

        async def reload() -> tuple[set[str], set[str]]:
            try:
                assert await supervisor.reconcile()
                changes = supervisor.last_changes
                assert changes is not None
                return {s.name for s in changes.replaced}, {s.name for s in changes.removed}
            finally:
                await gateway.scheduler.shutdown(stop_always=True)

        replaced, removed = asyncio.run(reload())
        plan = supervisor.plan
        assert plan is not None
        assert plan.render() == shown
        assert [a.target for a in plan.of(ActionKind.RESTART)] == ["server:a"]
        assert [a.target for a in plan.of(ActionKind.STOP)] == ["server:b"]
        assert [a.target for a in plan.of(ActionKind.START)] == ["server:c"]
        # The daemon acted on what the plan says: it restarts a and stops b.
        assert replaced == {"a"} and removed == {"b"}
    finally:
        reap_servers(home)


def test_the_daemon_applies_on_request_and_refuses_a_bad_manifest(tmp_path: Path) -> None:
    """``POST /mlx-lama/apply`` (what ``mlx-lama apply`` hands a daemon) reconciles the
    files as they are now and answers with the plan; a manifest that does not
    validate is refused with its problem, and the last good one stays in force."""
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text("version = 1\n", encoding="utf-8")
    with gateway_in_thread(manifest) as running, httpx.Client(trust_env=False) as http:
        url = running.url + "/mlx-lama/apply"
        before = running.health()["reloads"]
        assert isinstance(before, int)
        reply = http.post(url, json={}, timeout=30)
        assert reply.status_code == 200, reply.text
        assert reply.json()["plan"] == {"changes": [], "summary": "No changes.", "notes": []}
        # Answered by a reload of its own, though the files did not change.
        assert reply.json()["reloads"] > before

        manifest.write_text("version = 1\n[server]\nport = 0\n", encoding="utf-8")
        refused = http.post(url, json={}, timeout=30)
        assert refused.status_code == 409, refused.text
        assert "port" in refused.json()["error"] and "last good manifest" in refused.text
        assert running.health()["status"] == "degraded"
