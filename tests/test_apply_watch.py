"""``mlx-lama apply --watch`` end to end: a real watcher subprocess, real saves, a real server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from mlx_lama import paths
from tests.fixtures.cli import cli
from tests.fixtures.gateway import reap_servers, wait_for
from tests.fixtures.servers import free_port

STARTUP = 240.0  # generous: a loaded machine takes a while to start mlx_lm.server


@dataclass
class Watcher:
    """The ``apply --watch`` subprocess and the files its output goes to."""

    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_output(self, text: str, *, count: int = 1, timeout: float = 60.0) -> None:
        """Until ``text`` has appeared ``count`` times on stdout or stderr."""

        def seen() -> bool:
            return (self.stdout + self.stderr).count(text) >= count

        try:
            wait_for(lambda: seen() or self.process.poll() is not None, timeout, repr(text))
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.describe()}") from None
        assert seen(), f"the watcher exited before printing {text!r}\n{self.describe()}"

    def describe(self) -> str:
        return f"--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}"


@contextmanager
def watching(manifest: Path, log_dir: Path) -> Iterator[Watcher]:
    """``mlx-lama apply --watch -f manifest``; always stopped, with every server it started."""
    argv = [sys.executable, "-m", "mlx_lama", "apply", "--watch", "-f", str(manifest)]
    argv += ["--timeout", str(int(STARTUP))]
    stdout_path, stderr_path = log_dir / "watch.out", log_dir / "watch.err"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=dict(os.environ),  # already isolated by the autouse fixture
            start_new_session=True,
        )
    try:
        yield Watcher(process, stdout_path, stderr_path)
    finally:
        if process.poll() is None:
            with suppress(ProcessLookupError):
                process.terminate()
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=15)
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        reap_servers(paths.home())


def manifest_text(model: Path, port: int, serve: str) -> str:
    return f'version = 1\n\n[models.tiny]\npath = "{model}"\nserve = "{serve}"\nport = {port}\n'


def save(path: Path, text: str) -> None:
    """Save as most editors do: write a temporary file, then rename it over the manifest."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.replace(path)


def record() -> Path:
    return paths.home() / "run" / "tiny.json"


def recorded_pid() -> int:
    return int(json.loads(record().read_text())["pid"])


def alive(pid: int) -> bool:
    with suppress(psutil.NoSuchProcess):
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    return False


def chat(port: int) -> str:
    """A non-empty chat completion from the server on ``port``."""
    reply = httpx.post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        timeout=120,
        trust_env=False,
    )
    assert reply.status_code == 200, reply.text
    content = str(reply.json()["choices"][0]["message"]["content"])
    assert content.strip()
    return content


@pytest.mark.parametrize("flag", ["--dry-run", "--locked"])
def test_watch_refuses_dry_run_and_locked(tmp_path: Path, flag: str) -> None:
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text("version = 1\n")
    code, out, err = cli("apply", "-f", str(manifest), "--watch", flag)
    assert code == 2
    assert out == ""
    assert f"--watch cannot be combined with {flag}" in err


def test_watch_needs_a_manifest_that_loads_to_start(tmp_path: Path) -> None:
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text("version = 1\n[models.tiny\n")
    code, out, err = cli("apply", "-f", str(manifest), "--watch")
    assert code == 1
    assert out == ""
    assert f"{manifest}:2:" in err


def test_sigterm_ends_the_watch_and_a_save_without_models_applies(tmp_path: Path) -> None:
    (tmp_path / "project").mkdir()
    manifest = tmp_path / "project" / "mlxlama.toml"
    manifest.write_text("version = 1\n")
    with watching(manifest, tmp_path) as watcher:
        watcher.wait_for_output("Ctrl-C stops watching")
        manifest.write_text("version = 1\n# a comment\n")  # in place, like sed -i
        watcher.wait_for_output("No changes.", count=2)
        assert "mlxlama.toml changed: applying" in watcher.stderr
        watcher.process.send_signal(signal.SIGTERM)
        assert watcher.process.wait(timeout=60) == 0, watcher.describe()
        assert watcher.stderr.rstrip().endswith("stopped watching; servers keep running")


@pytest.mark.server
def test_each_save_is_applied_and_a_bad_save_keeps_what_runs(
    tmp_path: Path, tiny_model: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    manifest = project / "mlxlama.toml"
    port = free_port()
    manifest.write_text(manifest_text(tiny_model, port, "never"))

    with watching(manifest, tmp_path) as watcher:
        watcher.wait_for_output("Ctrl-C stops watching")
        assert watcher.stdout == "No changes.\n"
        assert not record().exists()

        save(manifest, manifest_text(tiny_model, port, "always"))
        watcher.wait_for_output("Started 1 server", timeout=STARTUP + 60)
        assert re.search(r"\[\d\d:\d\d:\d\d\] mlxlama.toml changed: applying", watcher.stderr)
        assert re.search(r'\+ start\s+server:tiny\s+serve = "always"', watcher.stdout)
        pid = recorded_pid()
        assert alive(pid)
        chat(port)

        # Invalid TOML: reported with file:line, and the server is left alone.
        broken = manifest_text(tiny_model, port, "never").replace('"never"', '"never')
        save(manifest, broken)
        watcher.wait_for_output("keeping what runs; waiting for a valid save")
        assert f"{manifest}:5:" in watcher.stderr, watcher.describe()
        assert recorded_pid() == pid and alive(pid)
        chat(port)

        # A deleted manifest stops nothing either.
        manifest.unlink()
        watcher.wait_for_output("mlxlama.toml is gone; nothing was stopped")
        assert recorded_pid() == pid and alive(pid)

        # The fixed manifest is applied: serve = "never" stops the server, unasked.
        save(manifest, manifest_text(tiny_model, port, "never"))
        watcher.wait_for_output("Stopped 1 server", timeout=120)
        wait_for(lambda: not record().exists() and not alive(pid), 60, "the server to stop")
        assert "refused" not in watcher.stderr

        watcher.process.send_signal(signal.SIGINT)
        assert watcher.process.wait(timeout=60) == 0, watcher.describe()
        assert watcher.stderr.rstrip().endswith("stopped watching; servers keep running")
        assert "Traceback" not in watcher.stderr
