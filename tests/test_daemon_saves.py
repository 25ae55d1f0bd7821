"""Saves the way editors and shells make them never stop a server.

``mlx-lama serve`` runs as a subprocess on the tiny model; the manifest is
rewritten in place (truncated, then written half a second later), saved without
its ``version = 1``, deleted and recreated, and saved broken then restored. No
server stops or restarts, and ``/health`` says what the file is now.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.fixtures.gateway import RunningGateway, gateway_process, wait_for
from tests.test_daemon import _manifest, _ready_pid


def _health_ok(daemon: RunningGateway) -> bool:
    return daemon.health()["status"] == "ok" and "manifest_error" not in daemon.health()


def _refused(daemon: RunningGateway, words: str) -> bool:
    return words in str(daemon.health().get("manifest_error", ""))


def test_in_place_saves_deletes_and_restores_keep_every_server(
    tiny_model: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "mlxlama.toml"
    good = _manifest(tiny_model)
    manifest.write_text(good, encoding="utf-8")
    log = tmp_path / "daemon.log"
    with gateway_process(manifest, log_path=log) as daemon:
        pid = _ready_pid(daemon, "a")

        # An editor's in-place save: the file is empty for a while, then whole again.
        with manifest.open("w", encoding="utf-8") as out:
            out.flush()
            wait_for(lambda: _refused(daemon, "the file is empty"), 10, "the empty save")
            time.sleep(0.5)
            out.write(good)
        wait_for(lambda: _health_ok(daemon), 10, "health to be ok again")

        # A save without its `version = 1` line: refused like any invalid save.
        manifest.write_text(good.removeprefix("version = 1\n"), encoding="utf-8")
        wait_for(
            lambda: _refused(daemon, "does not say which version it is"), 10, "the unversioned save"
        )
        manifest.write_text(good, encoding="utf-8")
        wait_for(lambda: _health_ok(daemon), 10, "health to be ok again")

        # Deleted, then recreated with the same content.
        manifest.unlink()
        wait_for(lambda: _refused(daemon, "is gone"), 10, "the deletion to be seen")
        manifest.write_text(good, encoding="utf-8")
        wait_for(lambda: _health_ok(daemon), 10, "health to be ok again")

        # A broken save, then the same good content copied back.
        manifest.write_text(good + "[models.a.oops\n", encoding="utf-8")
        wait_for(lambda: _refused(daemon, "mlxlama.toml:"), 10, "the broken save")
        manifest.write_text(good, encoding="utf-8")
        wait_for(lambda: _health_ok(daemon), 10, "health to be ok again")

        assert _ready_pid(daemon, "a") == pid
        text = log.read_text(errors="replace")
        assert "stopping" not in text and "removed from the manifest" not in text, text
