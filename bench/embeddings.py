"""Embedding models: a cold start's first vector, warm requests, and the server's memory.

What it measures, on the tiny random BERT of the tests (``tests/fixtures/tiny_embedding.py``)
served by mlx-lama's embedding engine (``backends/embedding_server.py`` over
mlx-embeddings, in that engine's own environment):

- **cold start**: launch to the first vector, three ways: the engine's program run
  by hand (``python embedding_server.py --model ...``), the same as mlx-lama launches
  it (``python -c engine_script(...)``: PyTorch left out), and an on-demand model
  behind ``mlx-lama serve`` (the first ``/api/embed``, which starts its server);
- **warm requests**: one text and a batch of 32, straight to the engine's
  ``/v1/embeddings`` and through the gateway's ``/api/embed`` and ``/v1/embeddings``;
- **memory**: the embedding server's USS (memory only it holds) once warm.

Medians of ``runs`` requests (cold starts: at most 3 each). Reports, never asserts;
stops every process it started (by PID) and checks none survives.
"""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
from tests.fixtures.servers import free_port
from tests.fixtures.tiny_embedding import make_tiny_embedding_model

from bench.gateway import isolated_env, start_gateway, stop_process, survivors, tail, tear_down
from bench.report import machine, versions, write_section
from mlx_lama.backends.base import get_backend
from mlx_lama.backends.interpreters import engine_script
from mlx_lama.backends.mlx_embeddings import SERVER_PROGRAM

COLD_RUNS = 3
TIMEOUT = 300.0
ONE = ["a quiet lake at dawn"]
BATCH = [f"note {i}: the quick brown fox jumps over the lazy dog" for i in range(32)]


def main(runs: int = 15) -> None:
    python = get_backend("mlx-embeddings").environment_python()
    if python is None:
        raise SystemExit("install the engine first: mlx-lama install mlx-embeddings")
    root = Path(tempfile.mkdtemp(prefix="mlx-lama-bench-embeddings-"))
    env = isolated_env(root)
    home = Path(env["MLX_LAMA_HOME"])
    log = root / "gateway.log"
    model = make_tiny_embedding_model(root / "tiny-bert", seed=0)
    manifest = root / "mlxlama.toml"
    manifest.write_text(f'version = 1\n[models.minilm]\npath = "{model}"\nkind = "embedding"\n')
    watched: list[int] = []
    gateway: subprocess.Popen[bytes] | None = None
    try:
        by_hand = [python, str(SERVER_PROGRAM)]
        ours = [python, "-c", engine_script(SERVER_PROGRAM)]
        starts = {
            way: [
                engine_start(argv, model, env, root / f"engine-{way}.log") for _ in range(COLD_RUNS)
            ]
            for way, argv in (("by hand", by_hand), ("as mlx-lama runs it", ours))
        }
        cold = []
        for _ in range(COLD_RUNS):
            gateway, url = start_gateway(manifest, env, log)
            watched.append(gateway.pid)
            wait_answering(url, gateway, log)
            began = time.monotonic()
            answer = httpx.post(
                f"{url}/api/embed", json={"model": "minilm", "input": ONE}, timeout=TIMEOUT
            )
            if answer.status_code != 200:
                raise SystemExit(
                    f"cold /api/embed: {answer.status_code} {answer.text}\n{tail(log)}"
                )
            cold.append(time.monotonic() - began)
            watched.append(server_pid(url))
            stop_process(gateway, 60)
        gateway, url = start_gateway(manifest, env, log)
        watched.append(gateway.pid)
        wait_answering(url, gateway, log)
        warm, uss = warm_requests(url, runs)
        watched.append(server_pid(url))
        print(f"starts {starts}\ncold {cold}\nwarm {warm}\nuss {uss}", flush=True)
        write_section("embeddings", render(starts, cold, warm, uss, runs))
    finally:
        tear_down(gateway, home, root, watched)


def engine_start(argv: list[str], model: Path, env: dict[str, str], log: Path) -> float:
    """Seconds from launching the embedding server to its first vector."""
    port = free_port()
    command = [*argv, "--model", str(model), "--port", str(port), "--served-model-name", "m"]
    began = time.monotonic()
    with log.open("wb") as out:
        engine = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        with httpx.Client(trust_env=False, timeout=30.0) as client:
            while True:
                if engine.poll() is not None:
                    raise SystemExit(f"the embedding server exited:\n{tail(log)}")
                try:
                    url = f"http://127.0.0.1:{port}/v1/embeddings"
                    if client.post(url, json={"input": ONE}).status_code == 200:
                        return time.monotonic() - began
                except httpx.HTTPError:
                    time.sleep(0.02)
    finally:
        stop_process(engine, 15)
        if survivors([engine.pid]):
            raise SystemExit(f"the embedding server {engine.pid} survived")


def wait_answering(url: str, gateway: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT
    while True:
        if gateway.poll() is not None:
            raise SystemExit(f"the gateway exited:\n{tail(log)}")
        try:
            if httpx.get(f"{url}/api/version", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the gateway did not answer:\n{tail(log)}")
        time.sleep(0.05)


def server_pid(url: str) -> int:
    return int(httpx.get(f"{url}/health", timeout=5).json()["models"]["minilm"]["pid"])


def warm_requests(url: str, runs: int) -> tuple[dict[str, float], int]:
    """Median seconds of each warm request, by way and size; the server's USS."""
    loaded = httpx.post(f"{url}/api/embed", json={"model": "minilm", "input": ONE}, timeout=TIMEOUT)
    loaded.raise_for_status()
    pid = server_pid(url)
    engine = f"http://127.0.0.1:{engine_port(pid)}/v1/embeddings"
    ways: dict[str, Callable[[httpx.Client, list[str]], httpx.Response]] = {
        "engine /v1/embeddings": lambda c, texts: c.post(engine, json={"input": texts}),
        "gateway /api/embed": lambda c, texts: c.post(
            f"{url}/api/embed", json={"model": "minilm", "input": texts}
        ),
        "gateway /v1/embeddings": lambda c, texts: c.post(
            f"{url}/v1/embeddings", json={"model": "minilm", "input": texts}
        ),
    }
    medians: dict[str, float] = {}
    with httpx.Client(trust_env=False, timeout=TIMEOUT) as client:
        for size, texts in (("1 text", ONE), ("32 texts", BATCH)):
            for way, send in ways.items():
                for _ in range(3):  # warm-up
                    send(client, texts).raise_for_status()
                times = []
                for _ in range(runs):
                    began = time.monotonic()
                    send(client, texts).raise_for_status()
                    times.append(time.monotonic() - began)
                medians[f"{way}, {size}"] = statistics.median(times)
    return medians, psutil.Process(pid).memory_full_info().uss


def engine_port(pid: int) -> int:
    listening = [
        c.laddr.port for c in psutil.Process(pid).net_connections() if c.status == "LISTEN"
    ]
    return listening[0]


def render(
    starts: dict[str, list[float]], cold: list[float], warm: dict[str, float], uss: int, runs: int
) -> str:
    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"

    rows = "\n".join(
        f"| engine's own start, {way} (launch to first vector) | {cell(v)} |"
        for way, v in starts.items()
    )
    warm_rows = "\n".join(f"| {what} | {seconds * 1000:.1f} ms |" for what, seconds in warm.items())
    return f"""## Embedding models

Command: `uv run --all-extras python -m bench embeddings --runs {runs}`
({machine()}; {versions("mlx-lama")}, mlx-embeddings in its own environment).

The tiny random BERT of the tests (32-d vectors, 64-token context) on mlx-lama's
embedding engine. Cold starts: medians (min-max) of {COLD_RUNS}; the gateway's is
an on-demand model's first `/api/embed`, from a daemon that serves nothing yet.

| cold start | time |
|---|---|
{rows}
| through `mlx-lama serve`, on demand (the request that starts it) | {cell(cold)} |

Warm requests, medians of {runs}:

| request | time |
|---|---|
{warm_rows}

Memory of the warm embedding server: {uss / 2**20:.0f} MiB USS (what only it holds:
Python, MLX and mlx-embeddings' imports; the model's weights are 150 KB).

A warm request once took 44 ms on the engine alone, whatever its size: the server
wrote headers and body apart, and Nagle's algorithm held the body until the
client's delayed ACK of the headers (40 ms on Linux). The engine now sets
`TCP_NODELAY`; this suite found it.

What this shows: a cold embedding model costs what its engine's own start costs
(imports and the load), and the gateway adds the difference between the rows
above, on a 2-core machine where the engine, the gateway and this script share the
CPUs. On the tiny model a request is mostly HTTP and JSON; a real model's forward
pass dwarfs both.
"""
