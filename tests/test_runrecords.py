"""Run records (``orchestrator/runrecords.py``): files, damage, and checks against real processes.

Every process a test starts here is a small Python child (a sleep or an
``http.server``) killed in the ``procs`` fixture's teardown. The helpers are
shared with test_process.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import replace

import psutil
import pytest

from mlx_lama import paths
from mlx_lama.orchestrator import runrecords
from mlx_lama.orchestrator.runrecords import (
    RunRecordError,
    delete_record,
    inspect_record,
    read_records,
    record_from_json,
    record_path,
    record_stem,
    record_to_json,
    write_record,
)
from mlx_lama.orchestrator.state import RunRecord
from tests.fixtures.servers import free_port

SLEEP = "import time; time.sleep(120)"


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test started; all killed (with their groups) and reaped afterwards."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                with suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with suppress(ProcessLookupError):
                    proc.kill()
            proc.wait(timeout=10)


def spawn(procs: list[subprocess.Popen[bytes]], code: str, *args: str) -> subprocess.Popen[bytes]:
    """``python -c CODE ARGS`` in its own session, registered for teardown."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    procs.append(proc)
    return proc


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing listens on {port} after {timeout}s")
        time.sleep(0.05)


def gone(pid: int, timeout: float = 5.0) -> bool:
    """True once ``pid`` has exited (a zombie waiting for its parent counts as exited)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def record_for(proc: subprocess.Popen[bytes], **changes: object) -> RunRecord:
    """A record that describes ``proc`` exactly (what start_server would have written),
    once it has exec'd: until then the child's command line is its parent's."""
    info = psutil.Process(proc.pid)
    deadline = time.monotonic() + 30
    while info.cmdline()[1:] != [str(arg) for arg in proc.args[1:]]:  # type: ignore[index]
        assert time.monotonic() < deadline, f"{proc.args!r} never started"
        time.sleep(0.01)
    record = RunRecord(
        name="tiny:latest",
        pid=proc.pid,
        port=free_port(),
        host="127.0.0.1",
        engine="mlx-lm",
        model="tiny:latest",
        spec_hash="0123456789abcdef",
        argv=tuple(info.cmdline()),
        started_at=time.time(),
        process_started=info.create_time(),
        log_path="/nowhere.log",
    )
    return replace(record, **changes)  # type: ignore[arg-type]


def sample_record(**changes: object) -> RunRecord:
    record = RunRecord(
        name="mlx-community/Qwen3-4B:latest",
        pid=4242,
        port=8081,
        host="127.0.0.1",
        engine="vllm-mlx",
        model="qwen",
        spec_hash="0123456789abcdef",
        argv=("/usr/bin/python3", "-m", "vllm_mlx.cli", "serve", "/m"),
        started_at=1_800_000_000.25,
        process_started=1_800_000_000.1,
        log_path="/home/u/.mlx-lama/logs/x.log",
        manifest="/proj/mlxlama.toml",
        spec={"engine": "vllm-mlx", "port": None, "args": ["--x"], "env": {"A": "b"}},
    )
    return replace(record, **changes)  # type: ignore[arg-type]


# --- file names ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("qwen-coder:7b", "qwen-coder@7b"),
        ("llama3", "llama3"),
        ("mlx-community/Qwen3-4B-4bit", "mlx-community+qwen3-4b-4bit"),
        ("registry.example:5000/ns/model:v1.2", "registry.example@5000+ns+model@v1.2"),
        ("my--model", "my--model"),
        ("_private.v2", "_private.v2"),
    ],
)
def test_record_stem(name: str, stem: str) -> None:
    assert record_stem(name) == stem
    assert record_path(name) == paths.run_dir() / f"{stem}.json"


def test_record_stems_of_different_names_differ() -> None:
    assert record_stem("a/b") != record_stem("a--b")
    assert record_stem("a:b") != record_stem("a-b")


@pytest.mark.parametrize(
    "name",
    ["", "..", "../etc/passwd", "a/../../b", "..:x", ".hidden", "/abs", "a b", "a\\b", "a\x00b",
     "x" * 300, "a\nb"],
)  # fmt: skip
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(RunRecordError, match="cannot be used as a file name"):
        record_path(name)


# --- reading and writing -------------------------------------------------------------


def test_round_trip() -> None:
    record = sample_record()
    path = write_record(record)
    assert path == paths.run_dir() / "mlx-community+qwen3-4b@latest.json"
    assert json.loads(path.read_text())["format"] == runrecords.RECORD_FORMAT
    records, warnings = read_records()
    assert warnings == []
    assert records == [record]
    assert records[0].spec == record.spec  # spec is excluded from ==
    assert record_from_json(record_to_json(record)).argv == record.argv


def test_write_replaces_and_delete_removes() -> None:
    write_record(sample_record(pid=1))
    write_record(sample_record(pid=2))
    assert [r.pid for r in read_records()[0]] == [2]
    delete_record("mlx-community/Qwen3-4B:latest")
    delete_record("mlx-community/Qwen3-4B:latest")  # already gone: fine
    assert read_records() == ([], [])


def test_no_run_folder_means_no_records() -> None:
    assert not paths.run_dir().exists()
    assert read_records() == ([], [])


def test_records_are_sorted_by_name() -> None:
    for name in ("b", "c", "a"):
        write_record(sample_record(name=name))
    assert [r.name for r in read_records()[0]] == ["a", "b", "c"]


def _good() -> dict[str, object]:
    return json.loads(record_to_json(sample_record(name="bad")))  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("", "not JSON"),
        ('{"format": 1, "name": "bad", "pi', "not JSON"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({**_good(), "format": 99}), "unknown record format"),
        (json.dumps({**_good(), "pid": "12"}), "'pid'"),
        (json.dumps({**_good(), "pid": True}), "'pid'"),
        (json.dumps({**_good(), "argv": []}), "'argv'"),
        (json.dumps({**_good(), "engine": "llama.cpp"}), "unknown engine"),
        (json.dumps({**_good(), "spec": []}), "'spec'"),
        (json.dumps({k: v for k, v in _good().items() if k != "port"}), "'port'"),
        (json.dumps({**_good(), "name": "other"}), "names server 'other'"),
    ],
)
def test_damaged_records_become_warnings(content: str, why: str) -> None:
    good = sample_record()
    write_record(good)
    paths.run_dir().joinpath("bad.json").write_text(content)
    paths.run_dir().joinpath("binary.json").write_bytes(b"\xff\xfe\x00")
    paths.run_dir().joinpath(".bad.json.tmp123").write_text("half a write")  # ignored
    paths.run_dir().joinpath("README").write_text("not a record")  # ignored

    records, warnings = read_records()

    assert records == [good]
    assert len(warnings) == 2
    bad_warning = next(w for w in warnings if "bad.json" in w)
    assert why in bad_warning
    assert "delete it once no server it describes is running" in bad_warning


# --- inspecting against the process table ---------------------------------------------


def test_no_such_pid_is_dead(procs: list[subprocess.Popen[bytes]]) -> None:
    proc = spawn(procs, SLEEP)
    record = record_for(proc)
    proc.kill()
    proc.wait()
    assert inspect_record(record).state == "dead"


def test_unreaped_zombie_is_dead(procs: list[subprocess.Popen[bytes]]) -> None:
    proc = spawn(procs, SLEEP)
    record = record_for(proc)
    proc.send_signal(signal.SIGKILL)  # no wait(): it stays a zombie
    assert gone(proc.pid)
    assert inspect_record(record).state == "dead"


def test_other_start_time_is_foreign(procs: list[subprocess.Popen[bytes]]) -> None:
    proc = spawn(procs, SLEEP)
    record = record_for(proc)
    # The pid was reused: same number, a process that started later.
    assert inspect_record(replace(record, process_started=record.process_started - 30)).state == (
        "foreign"
    )
    # Within the tolerance, it is still ours.
    assert inspect_record(replace(record, process_started=record.process_started + 0.5)).alive


def test_other_command_line_is_foreign(procs: list[subprocess.Popen[bytes]]) -> None:
    proc = spawn(procs, SLEEP)
    record = record_for(proc)
    other = (*record.argv, "--port", "1")
    assert inspect_record(replace(record, argv=other)).state == "foreign"
    # argv[0] may differ (macOS re-execs framework Pythons): still ours.
    moved = ("/elsewhere/python", *record.argv[1:])
    assert inspect_record(replace(record, argv=moved)).state == "unresponsive"


def test_silent_port_is_unresponsive(procs: list[subprocess.Popen[bytes]]) -> None:
    proc = spawn(procs, SLEEP)
    record = record_for(proc)  # a free port: nobody listens
    server = inspect_record(record)
    assert server.state == "unresponsive"
    assert server.alive
    assert server.name == "tiny:latest"


def test_listening_port_is_running(procs: list[subprocess.Popen[bytes]]) -> None:
    port = free_port()
    proc = spawn(
        procs,
        "import runpy, sys; sys.argv = ['http.server', '--bind', '127.0.0.1', sys.argv[1]]; "
        "runpy.run_module('http.server', run_name='__main__')",
        str(port),
    )
    wait_for_port(port)
    record = record_for(proc, port=port)
    assert inspect_record(record).state == "running"
    assert inspect_record(replace(record, host="0.0.0.0")).state == "running"  # probed on loopback
