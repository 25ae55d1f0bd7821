"""Starting and stopping servers (``orchestrator/process.py``) with real processes.

Real engines (marked ``server``) serve the tiny model: mlx-lm end to end
(ready, record, log, flags, stop), its failure modes (a broken model, a taken
port) and vllm-mlx. Fake engines (small ``python -c`` programs swapped in for
the launch spec) cover timeouts and early exits in well under a second each.
Every process is stopped in ``finally``; each test ends by checking that
nothing it started is left.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import suppress
from pathlib import Path

import httpx
import psutil
import pytest

from mlx_lama import paths
from mlx_lama.backends.base import LaunchSpec, get_backend
from mlx_lama.backends.interpreters import TORCH_ENV
from mlx_lama.backends.mlx_lm import ENGINE_MAIN
from mlx_lama.errors import MlxLamaError
from mlx_lama.orchestrator import process
from mlx_lama.orchestrator.process import (
    ServerStartError,
    start_server,
    stop_server,
    tail_log,
)
from mlx_lama.orchestrator.runrecords import (
    inspect_record,
    read_records,
    record_path,
    write_record,
)
from mlx_lama.orchestrator.state import RunRecord, ServerSpec
from tests.fixtures.servers import server_spec
from tests.test_runrecords import SLEEP, gone, procs, record_for, spawn

__all__ = ["procs"]  # the fixture, shared with test_runrecords

CONTENT_ONLY = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def processes_mentioning(text: str) -> list[psutil.Process]:
    """Live (non-zombie) processes of this test (its MLX_LAMA_HOME in their
    environment, orphans included) with ``text`` in one of their arguments: other
    tests running at the same time use the same tiny model."""
    home = os.environ["MLX_LAMA_HOME"]
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if any(text in arg for arg in proc.info["cmdline"] or ()):
            with suppress(psutil.Error):
                if proc.environ().get("MLX_LAMA_HOME") == home:
                    found.append(proc)
    return found


@pytest.fixture
def cleanup() -> Iterator[list[RunRecord]]:
    """Records of servers a test started: stopped (whole group) in teardown."""
    records: list[RunRecord] = []
    try:
        yield records
    finally:
        for record in records:
            with suppress(MlxLamaError):
                stop_server(record, timeout=5)
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(record.pid, signal.SIGKILL)  # anything left of its group


def chat(record: RunRecord, body: Mapping[str, object], **kwargs: object) -> httpx.Response:
    return httpx.post(
        f"http://127.0.0.1:{record.port}/v1/chat/completions",
        json=body,
        timeout=60,
        trust_env=False,
        **kwargs,  # type: ignore[arg-type]
    )


# --- real engines ------------------------------------------------------------------


@pytest.mark.server
def test_mlx_lm_start_serve_stop(tiny_model: Path, cleanup: list[RunRecord]) -> None:
    server = server_spec(
        tiny_model,
        template=CONTENT_ONLY,
        parameters=(("temperature", 0.0), ("num_predict", 3)),
    )
    began = time.monotonic()
    record = start_server(server, manifest="/project/mlxlama.toml")
    cleanup.append(record)
    print(f"mlx-lm ready in {time.monotonic() - began:.1f}s")

    # The record is on disk, complete, and describes a running server of ours.
    assert read_records() == ([record], [])
    assert record.argv[1:5] == ("-c", ENGINE_MAIN, "server", "--model")
    assert (record.host, record.manifest, record.spec_hash) == (
        "127.0.0.1", "/project/mlxlama.toml", server.spec_hash,
    )  # fmt: skip
    assert record.spec == server.launch_fields()
    assert inspect_record(record).state == "running"

    # The log has our header, then the engine's own output.
    log_text = Path(record.log_path).read_text()
    assert Path(record.log_path) == paths.logs_dir() / "tiny@latest.log"
    assert "mlx-lama starts mlx-lm server 'tiny:latest'" in log_text
    assert "Starting httpd" in log_text

    # A generation: --max-tokens 3 is the default length, and --chat-template
    # took the template text (content only: 2 prompt tokens, not 6).
    reply = chat(record, {"messages": [{"role": "user", "content": "hello world"}]})
    assert reply.status_code == 200, reply.text
    usage = reply.json()["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (2, 3)

    # --allowed-origins: no browser origin may read replies.
    for origin in ("http://evil.example", "http://127.0.0.1:11434", "null"):
        answer = chat(record, {"messages": [], "max_tokens": 1}, headers={"Origin": origin})
        assert "access-control-allow-origin" not in answer.headers

    # It served all that without PyTorch, which is installed here (vllm-mlx's).
    mapped = [m.path for m in psutil.Process(record.pid).memory_maps()]
    assert mapped and not [path for path in mapped if "torch" in Path(path).parts]

    began = time.monotonic()
    stop_server(record)
    print(f"mlx-lm stopped in {time.monotonic() - began:.2f}s")
    assert not psutil.pid_exists(record.pid)
    assert read_records() == ([], [])
    assert processes_mentioning(str(tiny_model)) == []


@pytest.mark.server
def test_mlx_lm_broken_model_fails_with_its_log(
    tiny_model: Path, tmp_path: Path, cleanup: list[RunRecord]
) -> None:
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model, broken)
    (broken / "model.safetensors").write_bytes(b"not weights")

    began = time.monotonic()
    with pytest.raises(ServerStartError) as caught:
        start_server(server_spec(broken), ready_timeout=120)
    print(f"broken model detected in {time.monotonic() - began:.1f}s")

    message = str(caught.value)
    assert "did not start: it logged a fatal error" in message
    assert "--- last lines of" in message
    assert "Traceback" in message or "Error" in message
    assert len(message.split("---\n", 1)[1].splitlines()) <= 20
    assert read_records() == ([], [])
    assert processes_mentioning(str(broken)) == []


@pytest.mark.server
def test_mlx_lm_taken_port_is_reported(tiny_model: Path, cleanup: list[RunRecord]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServerStartError) as caught:
            start_server(server_spec(tiny_model, port=port), ready_timeout=120)
    assert f"port {port} is taken" in str(caught.value)
    assert "Address already in use" in str(caught.value)
    assert read_records() == ([], [])
    assert processes_mentioning(str(tiny_model)) == []


@pytest.mark.server
@pytest.mark.engine("vllm-mlx")
def test_vllm_mlx_start_serve_stop(tiny_model: Path, cleanup: list[RunRecord]) -> None:
    server = server_spec(tiny_model, "vllm-mlx", parameters=(("num_predict", 2),))
    began = time.monotonic()
    record = start_server(server)
    cleanup.append(record)
    print(f"vllm-mlx ready in {time.monotonic() - began:.1f}s")

    assert inspect_record(record).state == "running"
    body = {"model": "tiny:latest", "messages": [{"role": "user", "content": "hello"}]}
    reply = chat(record, body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] == 2  # --max-tokens took
    # It served that without PyTorch (vllm-mlx installs it; transformers would import it).
    mapped = [m.path for m in psutil.Process(record.pid).memory_maps()]
    assert mapped and not [path for path in mapped if "torch" in Path(path).parts]

    began = time.monotonic()
    stop_server(record)
    print(f"vllm-mlx stopped in {time.monotonic() - began:.2f}s")
    assert not psutil.pid_exists(record.pid)
    assert read_records() == ([], [])
    assert processes_mentioning(str(tiny_model)) == []


# --- fake engines -------------------------------------------------------------------


def use_fake_engine(
    monkeypatch: pytest.MonkeyPatch,
    code: str,
    markers: tuple[str, ...] = (),
    env: tuple[tuple[str, str], ...] = (),
) -> None:
    """Make start_server run ``python -c CODE PORT`` instead of a real engine."""

    def fake(server: ServerSpec, port: int) -> LaunchSpec:
        return LaunchSpec(
            argv=(sys.executable, "-c", code, str(port), str(server.model_path)),
            env=env,
            host=server.host,
            port=port,
            served_model=None,
            ready_timeout=30,
            fatal_log_markers=markers,
        )

    monkeypatch.setattr(process, "launch_spec", fake)


HTTP_501 = (
    "import runpy, sys; sys.argv = ['http.server', '--bind', '127.0.0.1', sys.argv[1]]; "
    "runpy.run_module('http.server', run_name='__main__')"
)


def test_not_ready_in_time_is_stopped_and_forgotten(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_fake_engine(monkeypatch, HTTP_501)  # answers POST with 501, forever
    with pytest.raises(ServerStartError, match=r"not ready after 1\.5s \(last probe: HTTP 501"):
        start_server(server_spec(tmp_path), ready_timeout=1.5)
    assert read_records() == ([], [])
    assert processes_mentioning(str(tmp_path)) == []


def test_early_exit_gives_up_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_fake_engine(monkeypatch, "print('cannot load model', flush=True); raise SystemExit(3)")
    with pytest.raises(ServerStartError) as caught:
        start_server(server_spec(tmp_path), ready_timeout=30)
    assert "exited with code 3 before it was ready" in str(caught.value)
    assert caught.value.message.endswith("cannot load model")
    assert read_records() == ([], [])


def test_fatal_log_marker_gives_up_while_the_process_lives(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    code = "import time; print('model failed: BOOM', flush=True); time.sleep(60)"
    use_fake_engine(monkeypatch, code, markers=("BOOM",))
    with pytest.raises(ServerStartError, match="fatal error \\('BOOM'\\)"):
        start_server(server_spec(tmp_path), ready_timeout=30)
    assert processes_mentioning(str(tmp_path)) == []


def test_log_appends_one_header_per_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_fake_engine(monkeypatch, "print('run output'); raise SystemExit(1)")
    for _ in range(2):
        with pytest.raises(ServerStartError) as caught:
            start_server(server_spec(tmp_path))
        # Only this start's lines are quoted.
        assert caught.value.message.count("run output") == 1
    text = (paths.logs_dir() / "tiny@latest.log").read_text()
    assert text.count("mlx-lama starts mlx-lm server 'tiny:latest'") == 2
    assert text.splitlines().count("run output") == 2


def test_environment_and_working_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_TOKEN", "secret")
    monkeypatch.setenv("KEPT", "yes")
    code = (
        "import os; print('env', os.environ.get('HF_TOKEN'), os.environ['KEPT'], "
        "os.environ['EXTRA']); print('cwd', os.getcwd()); raise SystemExit(1)"
    )
    use_fake_engine(monkeypatch, code, env=(("EXTRA", "1"),))
    with pytest.raises(ServerStartError) as caught:
        start_server(server_spec(tmp_path))
    assert "env None yes 1" in caught.value.message  # no Hub token for the engine
    assert f"cwd {paths.home()}" in caught.value.message  # never the caller's folder


def test_unwritable_record_leaves_no_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_fake_engine(monkeypatch, SLEEP)
    paths.run_dir().parent.mkdir(parents=True)
    paths.run_dir().write_text("a file where the run folder should be")
    with pytest.raises(OSError):
        start_server(server_spec(tmp_path))
    assert processes_mentioning(str(tmp_path)) == []


def test_missing_model_folder_spawns_nothing(tmp_path: Path) -> None:
    with pytest.raises(ServerStartError, match="run `mlx-lama apply` to pull it"):
        start_server(server_spec(tmp_path / "not-pulled"))
    assert not paths.logs_dir().exists()
    assert read_records() == ([], [])


def test_start_refuses_a_server_that_is_running(
    procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    live = spawn(procs, SLEEP)
    write_record(record_for(live))
    with pytest.raises(ServerStartError, match="already running"):
        start_server(server_spec(tmp_path))
    assert live.poll() is None
    assert [r.pid for r in read_records()[0]] == [live.pid]


# --- stopping ------------------------------------------------------------------------


def test_stop_never_signals_a_foreign_pid(procs: list[subprocess.Popen[bytes]]) -> None:
    other = spawn(procs, SLEEP)
    # The record's process died and its pid now belongs to `other`, started later.
    stale = record_for(other, process_started=psutil.Process(other.pid).create_time() - 60)
    write_record(stale)
    stop_server(stale)
    time.sleep(0.2)
    assert other.poll() is None  # untouched
    assert read_records() == ([], [])  # the stale record is gone


def test_stop_of_a_dead_server_clears_its_record(procs: list[subprocess.Popen[bytes]]) -> None:
    proc = spawn(procs, SLEEP)
    record = record_for(proc)
    write_record(record)
    proc.kill()
    proc.wait()
    stop_server(record)
    assert read_records() == ([], [])


def test_stop_terminates_gracefully(procs: list[subprocess.Popen[bytes]]) -> None:
    proc = spawn(procs, SLEEP)
    record = record_for(proc)
    write_record(record)
    stop_server(record)
    assert proc.wait(timeout=5) == -signal.SIGTERM
    assert read_records() == ([], [])


IGNORES_TERM = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import signal, time; "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
print(child.pid, flush=True)
time.sleep(120)
"""


def test_stop_escalates_to_sigkill_on_the_group(procs: list[subprocess.Popen[bytes]]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", IGNORES_TERM],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    procs.append(proc)
    assert proc.stdout is not None
    grandchild = int(proc.stdout.readline())
    proc.stdout.close()
    record = record_for(proc)

    began = time.monotonic()
    stop_server(record, timeout=0.5)
    assert time.monotonic() - began >= 0.5  # SIGTERM got its grace period first
    assert proc.wait(timeout=5) == -signal.SIGKILL
    assert gone(grandchild)
    assert read_records() == ([], [])


def test_tail_log(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(50)))
    assert tail_log(log, 3) == "line 47\nline 48\nline 49"
    start = len("".join(f"line {i}\n" for i in range(48)))
    assert tail_log(log, 20, start=start) == "line 48\nline 49"
    assert tail_log(tmp_path / "missing.log") == ""
    assert record_path("tiny:latest").name == "tiny@latest.json"


@pytest.mark.server
@pytest.mark.engine("vllm-mlx")  # its environment has PyTorch (and mlx-lm) in it
@pytest.mark.parametrize(("torch_env", "loads_torch"), [(None, False), ("1", True)])
def test_the_engine_leaves_pytorch_out_unless_a_model_asks_for_it(
    torch_env: str | None, loads_torch: bool
) -> None:
    """``MLX_LAMA_ENGINE_TORCH=1`` in a model's env is the way back for a model whose
    own code needs torch; ``-X importtime`` lists every module the engine imports.
    mlx-lm run by the Python of vllm-mlx's environment, where PyTorch is installed."""
    python = get_backend("vllm-mlx").environment_python()
    assert python is not None, "install vllm-mlx in its own environment: mlx-lama install"
    env = {k: v for k, v in os.environ.items() if k != TORCH_ENV}
    if torch_env is not None:
        env[TORCH_ENV] = torch_env
    argv = [python, "-X", "importtime", "-c", ENGINE_MAIN, "server", "--help"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "--model" in done.stdout, done.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert "transformers" in imported
    assert ("torch" in imported) is loads_torch
