"""Time from a wedged or crashed engine to the next answered request.

What it measures, on the tiny random-weight model served ``always`` by
``mlx-lama serve`` (mlx_lm.server behind the gateway):

- **wedge**: a streamed ``/api/chat`` is in flight; after its first line the
  engine gets ``SIGSTOP`` (alive, port open, answering nothing). Measured from
  the signal: until the stream ends with its error line (the watchdog's
  detection, ``[server] wedge_timeout``, default 60 s), and until a new
  ``/api/chat`` sent right after that error is answered (200);
- **crash**: the engine gets ``SIGKILL``; a ``/api/chat`` is sent at once and
  measured until it is answered (it waits for the restart);
- beside them, the engine's own start on the same model until it answers a
  one-token completion, two ways: ``python -m mlx_lm server`` as a user runs it,
  and as mlx-lama launches it (``python -c ENGINE_MAIN server``: the same server,
  with PyTorch left out; the environment here has it, from vllm-mlx).

Each run starts from a fresh daemon (its ``always`` server already running
and adopted, or started), so every crash is the model's first in the
scheduler's window and waits its first backoff (1 s); later crashes within 10
minutes wait 2, 4, ... s. Medians of ``runs`` runs (at most 3 wedges: each
waits out the watchdog). Reports, never asserts; stops every process it
started (by PID) and checks none survives.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from tests.fixtures.servers import free_port

from bench.gateway import (
    MODEL,
    build,
    report_problems,
    start_gateway,
    stop_process,
    survivors,
    tail,
    tear_down,
    wait_ready,
)
from bench.report import machine, versions, write_section
from mlx_lama.backends.mlx_lm import ENGINE_MAIN

WEDGE_RUNS = 3
ANSWER_TIMEOUT = 300.0
CHAT = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "hello"}],
    "stream": False,
    "options": {"num_predict": 2},
}


def main(runs: int = 5) -> None:
    root = Path(tempfile.mkdtemp(prefix="mlx-lama-bench-recovery-"))
    home = root / "state" / "mlx-lama-home"
    log = root / "gateway.log"
    watched: list[int] = []
    gateway: subprocess.Popen[bytes] | None = None
    try:
        manifest, env, _port = build(root)
        model = Path(manifest.read_text().split('path = "', 1)[1].split('"', 1)[0])
        starts: dict[str, list[float]] = {"plain": [], "ours": []}
        for i in range(min(runs, 3)):
            for way, launcher in (("plain", ["-m", "mlx_lm"]), ("ours", ["-c", ENGINE_MAIN])):
                log_path = root / f"engine-{way}-{i}.log"
                starts[way].append(engine_start(launcher, model, env, log_path))
        print(f"engine start: {starts}", flush=True)
        crashes, wedges, detections = [], [], []
        for _ in range(runs):
            gateway, url = start_gateway(manifest, env, log)
            watched.append(gateway.pid)
            pid = wait_ready(url, gateway, log)
            watched.append(pid)
            crashes.append(crash(url, pid))
            print(f"crash -> answer {crashes[-1]:.2f}s", flush=True)
            stop_process(gateway, 60)
        for _ in range(min(runs, WEDGE_RUNS)):
            gateway, url = start_gateway(manifest, env, log)
            watched.append(gateway.pid)
            pid = wait_ready(url, gateway, log)
            watched.append(pid)
            detected, answered = wedge(url, pid)
            detections.append(detected)
            wedges.append(answered)
            print(f"wedge -> error {detected:.2f}s, answer {answered:.2f}s", flush=True)
            stop_process(gateway, 60)
        gateway = None
        report_problems(log)
        write_section("recovery", render(starts, crashes, detections, wedges))
    except BaseException:
        for path in (log, *sorted((home / "logs").glob("*.log"))):
            print(f"--- last lines of {path.name} ---\n{tail(path)}", file=sys.stderr)
        raise
    finally:
        tear_down(gateway, home, root, watched)


def engine_start(launcher: list[str], model: Path, env: dict[str, str], log: Path) -> float:
    """Seconds from launching mlx_lm.server on ``model`` (``python LAUNCHER server``) to
    its first one-token answer."""
    port = free_port()
    argv = [sys.executable, *launcher, "server", "--model", str(model), "--port", str(port)]
    began = time.monotonic()
    with log.open("wb") as out:
        engine = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        body = {"prompt": "hi", "max_tokens": 1}
        with httpx.Client(trust_env=False, timeout=30.0) as client:
            while True:
                if engine.poll() is not None:
                    raise SystemExit(f"mlx_lm.server exited:\n{tail(log)}")
                try:
                    url = f"http://127.0.0.1:{port}/v1/completions"
                    if client.post(url, json=body).status_code == 200:
                        return time.monotonic() - began
                except httpx.HTTPError:
                    time.sleep(0.05)
    finally:
        stop_process(engine, 15)
        if survivors([engine.pid]):
            raise SystemExit(f"mlx_lm.server {engine.pid} survived")


def crash(url: str, pid: int) -> float:
    """SIGKILL the engine and time a request sent at once until it is answered."""
    with httpx.Client(trust_env=False, timeout=ANSWER_TIMEOUT) as client:
        began = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        answer = client.post(url + "/api/chat", json=CHAT)
        took = time.monotonic() - began
    if answer.status_code != 200:
        raise SystemExit(f"after a crash: {answer.status_code} {answer.text}")
    return took


def wedge(url: str, pid: int) -> tuple[float, float]:
    """SIGSTOP the engine mid-stream: seconds until the stream's error line, and until
    the next request is answered."""
    body = {**CHAT, "stream": True, "options": {"num_predict": 100_000}}
    began = 0.0
    last: dict[str, object] = {}
    try:
        with httpx.Client(trust_env=False, timeout=ANSWER_TIMEOUT) as client:
            with client.stream("POST", url + "/api/chat", json=body) as stream:
                for line in stream.iter_lines():
                    last = json.loads(line)
                    if not began:
                        began = time.monotonic()
                        os.kill(pid, signal.SIGSTOP)
            detected = time.monotonic() - began
            if "error" not in last:
                raise SystemExit(f"the stream of a wedged engine ended without an error: {last}")
            answer = client.post(url + "/api/chat", json=CHAT)
            answered = time.monotonic() - began
    finally:
        if survivors([pid]):  # the watchdog did not stop it: let the tear-down do so
            os.kill(pid, signal.SIGCONT)
    if answer.status_code != 200:
        raise SystemExit(f"after a wedge: {answer.status_code} {answer.text}")
    return detected, answered


def render(
    starts: dict[str, list[float]],
    crashes: list[float],
    detections: list[float],
    wedges: list[float],
) -> str:
    def cell(values: list[float]) -> str:
        low, high = min(values), max(values)
        return f"{statistics.median(values):.2f} s ({low:.2f}-{high:.2f}, {len(values)} runs)"

    plain, ours = cell(starts["plain"]), cell(starts["ours"])
    return f"""## Recovery: wedged and crashed engines

Command: `uv run --all-extras python -m bench recovery --runs {len(crashes)}`
({machine()}; {versions("mlx-lama", "mlx-lm")}).

The tiny test model, served
`always` by mlx_lm.server behind `mlx-lama serve` with the default
`wedge_timeout` (60 s); a fresh daemon per run, so each crash is the first in
the window and waits the first backoff (1 s). Medians (min-max).

| what | time |
|---|---|
| engine's own start, `python -m mlx_lm server` (launch to first answer) | {plain} |
| the same, as mlx-lama launches it (`python -c ENGINE_MAIN server`) | {ours} |
| crash (SIGKILL) to the next answered request | {cell(crashes)} |
| wedge (SIGSTOP mid-stream) to the stream's error line | {cell(detections)} |
| wedge (SIGSTOP mid-stream) to the next answered request | {cell(wedges)} |

A crash costs the backoff plus one engine start, as mlx-lama launches it.
transformers imports PyTorch whenever it is installed, which mlx-lm's server
never uses, so mlx-lama's launcher leaves it out; since vllm-mlx (which brings
PyTorch) lives in an environment of its own, mlx-lama's has none at all, and the
engine's own start is as fast. Measured 2026-12-07, with PyTorch beside mlx-lm
0.31.3: 7.18 s (6.96-7.35) for `python -m mlx_lm server`, 0.91 s (0.91-0.92)
as mlx-lama launched it, 2.15 s from a crash to the next answer. A wedge costs
the watchdog's limit (45 s of silence and a probe of up to 15 s; `[server]
wedge_timeout` tunes both), stopping the frozen engine (SIGTERM with SIGCONT,
at once here), then the same restart.
"""
