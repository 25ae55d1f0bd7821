"""``mlx-lama top``: the screen it draws from the daemon's stats, and the live
dashboard driven on an 80x24 pseudo-terminal against a daemon serving the tiny
model.

What the terminal shows is read through pyte, a terminal emulator, so the test
sees the screen a person would (rows and columns), not the escape codes.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pyte
import pytest
from rich.console import Console

from mlx_lama.cli._top_screen import View, render
from tests.fixtures.cli import cli
from tests.fixtures.gateway import gateway_process, tiny_on_demand, wait_for

DEADLINE = 180.0  # s; only how long a hung test waits, never a performance bound
COLUMNS, LINES = 80, 24


def _stats(**server: Any) -> dict[str, Any]:
    row = {
        "name": "qwen2.5-coder:7b", "backend": "mlx-lm", "state": "ready", "port": 41234,
        "memory_bytes": 5_300_000_000, "tokens_per_second": 812.4, "ttft_p50": 0.012,
        "ttft_p95": 0.031, "requests": 120, "errors": 2, "prompt_tokens": 5000,
        "completion_tokens": 40000, "keep_alive_left": 252.0, **server,
    }  # fmt: skip
    return {
        "gateway": {"url": "http://127.0.0.1:11434", "uptime_seconds": 3725, "requests": 1234,
                    "requests_per_second": 2.5},
        "system": {"cpu_percent": 37.0, "cpus": 2, "memory_used": 10_000_000_000,
                   "memory_total": 24_000_000_000},
        "servers": [row, {**row, "name": "tiny", "state": "not downloaded", "port": None,
                          "requests": 0, "keep_alive_left": None}],
        "recent": [{"at": 1764950000.0, "model": "tiny", "endpoint": "/api/chat", "status": 200,
                    "seconds": 0.123, "prompt_tokens": 5, "completion_tokens": 30}],
    }  # fmt: skip


def _draw(stats: dict[str, Any], view: View) -> list[str]:
    console = Console(width=view.width, height=view.height, record=True, color_system=None)
    console.print(render(stats, view))
    return console.export_text().splitlines()


def test_the_screen_fits_80_by_24_and_shows_every_column() -> None:
    lines = _draw(_stats(), View(log_lines=[f"log line {i}" for i in range(100)]))
    assert len(lines) <= LINES and all(len(line) <= COLUMNS for line in lines)
    assert "2.5 req/s" in lines[0] and "CPU 37% of 2" in lines[1] and "10G / 24G" in lines[1]
    header = next(line for line in lines if line.startswith("NAME"))
    for title in ("BACKEND", "STATE", "PORT", "MEM", "TOK/S", "TTFT ms", "REQS", "ERR", "KEEP"):
        assert title in header
    row = next(line for line in lines if line.startswith("qwen"))
    assert row.split()[1:] == ["mlx-lm", "ready", "41234", "5.3G", "812", "12/31", "120", "2",
                               "45k", "4m12s"]  # fmt: skip
    assert "missing" in next(line for line in lines if line.startswith("tiny"))
    assert "log line 99" in lines[-2] and "q quit" in lines[-1]


def test_a_wide_screen_shows_the_estimate_beside_the_memory() -> None:
    view = View(width=100, log_lines=["a log line"])
    lines = _draw(_stats(estimate_bytes=6_100_000_000), view)
    assert all(len(line) <= 100 for line in lines)
    header = next(line for line in lines if line.startswith("NAME")).split()
    assert header[header.index("MEM") + 1] == "EST"
    row = next(line for line in lines if line.startswith("qwen")).split()
    assert row[4:6] == ["5.3G", "6.1G"]  # what it holds, what the budget counts
    narrow = _draw(_stats(estimate_bytes=6_100_000_000), View())
    assert "EST" not in next(line for line in narrow if line.startswith("NAME"))


def test_the_full_log_view_shows_as_many_lines_as_fit() -> None:
    view = View(full_log=True, log_lines=[f"log line {i}" for i in range(100)])
    lines = _draw(_stats(), view)
    assert len(lines) == LINES
    assert lines[3] == "log line 80" and lines[-2] == "log line 99"
    assert "Esc back" in lines[-1]


def test_top_without_a_daemon_says_how_to_start_one() -> None:
    code, out, err = cli("top")
    assert code == 1 and out == ""
    assert "no mlx-lama daemon is running" in err and "mlx-lama serve" in err


class Screen:
    """``mlx-lama top`` on an 80x24 pseudo-terminal, read through a terminal emulator."""

    def __init__(self, *args: str) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, COLUMNS, 0, 0))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlx_lama", "top", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=dict(os.environ, TERM="xterm-256color", COLUMNS=str(COLUMNS), LINES=str(LINES)),
            start_new_session=True,
        )
        os.close(slave)
        self.master = master
        self.screen = pyte.Screen(COLUMNS, LINES)
        self.stream = pyte.ByteStream(self.screen)

    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.screen.display]

    def wait_until(self, check: Callable[[list[str]], bool], what: str) -> list[str]:
        deadline = time.monotonic() + DEADLINE
        while not check(self.lines()):
            if time.monotonic() > deadline:
                raise AssertionError(f"the screen never showed {what}:\n" + "\n".join(self.lines()))
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                try:
                    self.stream.feed(os.read(self.master, 65536))
                except OSError:  # the program closed the terminal
                    if self.process.poll() is not None:
                        shown = "\n".join(self.lines())
                        raise AssertionError(f"top exited before {what}:\n{shown}") from None
        return self.lines()

    def press(self, key: str) -> None:
        os.write(self.master, key.encode())

    def close(self) -> int | None:
        if self.process.poll() is None:
            self.process.kill()
        code = self.process.wait(30)
        os.close(self.master)
        return code


def _row(lines: list[str], name: str) -> list[str] | None:
    for line in lines:
        cells = line.split()
        if cells and cells[0] == name:
            return cells
    return None


@pytest.mark.server
def test_top_shows_the_servers_work_and_stops_it_with_s(tmp_path: Path, tiny_model: Path) -> None:
    manifest = tiny_on_demand(tmp_path, tiny_model)
    with gateway_process(manifest, log_path=tmp_path / "serve.log") as gateway:
        chats = Chats(gateway.url)
        chats.one()  # the first one starts the on-demand server
        pid = gateway.pid_of("tiny")
        screen = Screen("--interval", "0.5")
        worker = threading.Thread(target=chats.until_stopped, name="chats")
        try:
            worker.start()  # requests keep running while top watches
            lines = screen.wait_until(
                lambda shown: _counted(shown) >= 3, "the tiny row with 3 requests and tokens"
            )
            cells = _row(lines, "tiny")
            assert cells is not None and cells[1:3] == ["mlx-lm", "ready"]
            assert any("/api/chat" in line and "200" in line for line in lines)  # recent requests
            assert all(len(line) <= COLUMNS for line in lines)
            chats.stop.set()
            worker.join(DEADLINE)
            assert chats.errors == []
            screen.wait_until(lambda shown: _counted(shown) == chats.done, "every request counted")

            screen.press("s")  # stop: an on-demand model is unloaded now
            screen.wait_until(
                lambda shown: (row := _row(shown, "tiny")) is not None and row[2] == "stopped",
                "tiny stopped",
            )
            code, out, _ = cli("ps", "-f", str(manifest), "--json")
            assert code == 0
            assert all(server.get("pid") != pid for server in json.loads(out))
            wait_for(lambda: not _alive(pid), 30, "the tiny server's process to exit")

            screen.press("q")
            assert screen.process.wait(30) == 0
        finally:
            chats.stop.set()
            if worker.is_alive():
                worker.join(DEADLINE)
            screen.close()


class Chats:
    """Streamed Ollama chats with the tiny model, one after another."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.done = 0
        self.errors: list[str] = []

    def one(self) -> None:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}]}
        with (
            httpx.Client(base_url=self.url, trust_env=False, timeout=DEADLINE) as client,
            client.stream("POST", "/api/chat", json=body) as reply,
        ):
            lines = [json.loads(line) for line in reply.iter_lines() if line]
        if reply.status_code != 200 or not lines[-1].get("eval_count"):
            self.errors.append(f"{reply.status_code}: {lines[-1:]}")
        self.done += 1

    def until_stopped(self) -> None:
        while not self.stop.is_set():
            self.one()
            time.sleep(0.2)


def _counted(lines: list[str]) -> int:
    """The REQS the tiny row shows, when its TOKENS are above 0 too (else 0)."""
    cells = _row(lines, "tiny")
    if cells is None or len(cells) < 11 or not cells[7].isdigit() or cells[9] == "0":
        return 0
    return int(cells[7])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.engine("vllm-mlx")  # the next installed backend is vllm-mlx
def test_b_moves_a_model_to_the_next_installed_backend(tmp_path: Path) -> None:
    from mlx_lama.cli.daemonclient import Daemon
    from mlx_lama.cli.top import backend_choices, switch_backend
    from mlx_lama.schema import load_manifest

    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(
        'version = 1\n\n[backends.batched]  # kept\ntype = "vllm-mlx"\n\n'
        f'[models.tiny]  # my model\npath = "{tmp_path}"\n'
    )
    daemon = Daemon(url="http://127.0.0.1:9", manifest=manifest, pid=os.getpid())
    assert backend_choices(load_manifest(manifest), "tiny") == ["batched", "mlx-lm", "vllm-mlx"]
    said = switch_backend(daemon, "tiny")  # from the default, mlx-lm
    assert said == "tiny: backend mlx-lm -> vllm-mlx (the daemon restarts it)"
    assert load_manifest(manifest).backend_of("tiny") == "vllm-mlx"
    switch_backend(daemon, "tiny")
    assert load_manifest(manifest).backend_of("tiny") == "batched"  # round the list
    switch_backend(daemon, "tiny")
    assert load_manifest(manifest).backend_of("tiny") == "mlx-lm"
    text = manifest.read_text()
    assert "# kept" in text and "# my model" in text
