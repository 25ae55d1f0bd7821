"""Streaming through the mlx-lama gateway vs straight to the engine.

What it measures: for the tiny random-weight test model served by
``mlx_lm.server`` (at 1, 4, 8 and 16 concurrent streams) and by ``vllm-mlx``
(at 1, 4 and 16), the aggregate tokens/s, the time to first token (TTFT) and
the p99 pause between tokens of streamed chat completions, sent (a) directly
to the engine as OpenAI SSE, (b) through a bare relay (``bench/relay.py``:
one uvloop process that copies the bytes without parsing them; mlx-lm only),
(c) through the gateway as OpenAI SSE and (d) through the gateway as Ollama
NDJSON (``/api/chat``; mlx-lm only, compared with direct SSE and with the
gateway's SSE). Derived: the tokens/s ratio path/direct (gateway SSE target
>= 0.97) and the added TTFT, path median minus direct median (gateway SSE
target <= 3 ms). The relay's figures are the floor: what any process between
the client and the engine costs on this machine, to compare the gateway's
with. The section has the side-by-side table and a chart per engine and
measure (docs/benchmarks/gateway-*.png).

How: per engine, everything lives in a temporary folder (the model, an
isolated MLX_LAMA_HOME and Hugging Face home, a manifest with one ``serve =
"always"`` model on a fixed port). ``mlx-lama serve`` runs as a subprocess;
once its ``/health`` says the model is ready, the engine is reachable on its
own port too, and the relay is started in front of it. One asyncio httpx
client sends batches of parallel streams; the paths are interleaved batch by
batch (order reversed every round) after warm-up batches, so drift hits all
of them alike. The CPU seconds the engine, the path's in-between process (the
gateway or the relay) and this client use per batch are recorded too: on a
small machine they share the cores, and that explains most of what is
measured.

What it must not do: change the gateway, tune anything to meet a target, or
leave a process behind. The gateway and the relay are stopped (SIGTERM, then
SIGKILL of their groups), the always-on server by the PID in its run record
(after checking its start time), and the script checks with psutil that none
survives.
Thresholds are reported, never asserted.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import psutil
from tests.fixtures.servers import free_port
from tests.fixtures.tiny_model import make_tiny_model

from bench import report
from bench.report import (
    Comparison,
    Measurement,
    chart,
    comparison_table,
    machine,
    versions,
    write_section,
)

MODEL = "tiny"
MAX_TOKENS = 256
WARMUP_BATCHES = 2
QUIET_WINDOW = 0.25  # s; how long the idle machine is sampled before each timed batch
QUIET_CORES = 0.25  # busy cores below which the machine counts as quiet
QUIET_WAIT = 10.0  # s; the longest wait for quiet before a batch runs anyway
QUIET_BUDGET = 60.0  # s; all waits for quiet together, so a busy machine cannot stall the run
LATE_START = 0.1  # s; a TTFT above this means the backend admitted the stream late
MAX_REFUSED = 3  # connections a server may drop before answering, per stream
READY_TIMEOUT = 300.0
RELAY_READY_TIMEOUT = 30.0
RATIO_TARGET = 0.97
ADDED_TTFT_TARGET_MS = 3.0
PROMPT = [{"role": "user", "content": "hello"}]

DIRECT = "direct SSE"
RELAY = "bare relay (floor)"
GATEWAY = "gateway SSE"
OLLAMA = "gateway NDJSON"
PATHS = (DIRECT, RELAY, GATEWAY, OLLAMA)
# Per engine: the concurrency levels and the paths measured. mlx-lm carries the
# gateway's targets (1 and 8 streams) and the floor; vllm-mlx shows the same
# comparison on a continuous-batching engine.
BACKENDS: dict[str, tuple[tuple[int, ...], tuple[str, ...]]] = {
    "mlx-lm": ((1, 4, 8, 16), PATHS),
    "vllm-mlx": ((1, 4, 16), (DIRECT, GATEWAY)),
}


# -- one stream, one batch


@dataclass(frozen=True, slots=True)
class Stream:
    ttft: float  # seconds from sending the request to the first content event
    tokens: int  # events carrying non-empty content
    span: float  # seconds from the first to the last content event
    gaps: tuple[float, ...] = ()  # seconds between consecutive content events
    refused: int = 0  # connections the server dropped before answering (then tried again)

    @property
    def tokens_per_s(self) -> float:
        return (self.tokens - 1) / self.span if self.span > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Batch:
    wall: float  # seconds from the first request sent to the last stream ended
    streams: tuple[Stream, ...]
    cpu: dict[str, float]  # CPU seconds during the batch: between, backend, client, other

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.streams)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall


@dataclass(slots=True)
class Series:
    """All timed batches of one path at one concurrency level."""

    batches: list[Batch] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return statistics.median(b.tokens_per_s for b in self.batches)

    @property
    def stream_tokens_per_s(self) -> float:
        return statistics.median(s.tokens_per_s for s in self.streams())

    @property
    def ttft_ms(self) -> float:
        return statistics.median(s.ttft for s in self.streams()) * 1000

    def streams(self) -> Iterator[Stream]:
        for batch in self.batches:
            yield from batch.streams

    @property
    def p99_gap_ms(self) -> float:
        """The 99th percentile of the pauses between tokens, over every stream."""
        gaps = sorted(g for s in self.streams() for g in s.gaps)
        if len(gaps) < 2:
            return float("nan")
        return statistics.quantiles(gaps, n=100, method="inclusive")[98] * 1000

    def samples(self, what: str) -> tuple[float, ...]:
        """Per timed batch: aggregate tokens/s ("tokens"), or its median TTFT in ms
        ("ttft"), for the side-by-side tables and charts."""
        if what == "tokens":
            return tuple(b.tokens_per_s for b in self.batches)
        return tuple(statistics.median(s.ttft for s in b.streams) * 1000 for b in self.batches)

    @property
    def on_time_ttft_ms(self) -> float:
        on_time = [s.ttft for s in self.streams() if s.ttft <= LATE_START]
        return statistics.median(on_time) * 1000 if on_time else float("nan")

    @property
    def refused(self) -> int:
        return sum(s.refused for s in self.streams())

    @property
    def late(self) -> int:
        """Streams that waited for a later admission by the backend."""
        return sum(1 for s in self.streams() if s.ttft > LATE_START)

    @property
    def count(self) -> int:
        return sum(len(b.streams) for b in self.batches)

    def cpu_ms_per_1k_tokens(self, who: str) -> float:
        tokens = sum(b.tokens for b in self.batches)
        return sum(b.cpu[who] for b in self.batches) * 1000 / tokens * 1000

    def cores(self, *who: str) -> float:
        """CPU seconds of ``who`` per second of wall time, over the timed batches."""
        busy = sum(b.cpu[w] for b in self.batches for w in who)
        return busy / sum(b.wall for b in self.batches)


def batches(level: int, runs: int) -> int:
    """Timed batches per path: single streams are short, so more of them; 16 streams
    take seconds a batch, so fewer (the whole suite must fit its time)."""
    if level == 1:
        return runs + 5
    if level >= 16:
        return max(3, runs // 3)
    return max(3, runs * 2 // 3)


def warmups(level: int) -> int:
    return WARMUP_BATCHES if level <= 4 else 1


def openai_body(model: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messages": PROMPT,
        "max_tokens": MAX_TOKENS,
        "stream": True,
        "temperature": 0,
    }
    if model is not None:  # mlx_lm.server would try to load a model it is given
        body["model"] = model
    return body


def ollama_body() -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": PROMPT,
        "stream": True,
        "options": {"num_predict": MAX_TOKENS, "temperature": 0},
    }


def sse_content(line: str) -> bool | None:
    """True for an event with content, False for one without, None at ``[DONE]``."""
    if not line.startswith("data:"):
        return False
    data = line[5:].strip()
    if data == "[DONE]":
        return None
    event = json.loads(data)
    if "error" in event:
        raise RuntimeError(f"error event in the stream: {data}")
    choices = event.get("choices") or [{}]
    return bool((choices[0].get("delta") or {}).get("content"))


def ndjson_content(line: str) -> bool | None:
    """True for a chunk with content, False for one without, None for the last one."""
    if not line.strip():
        return False
    chunk = json.loads(line)
    if "error" in chunk:
        raise RuntimeError(f"error line in the stream: {line}")
    if chunk.get("done"):
        return None
    return bool((chunk.get("message") or {}).get("content"))


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    body: dict[str, Any]
    content: Callable[[str], bool | None]


class Refused(Exception):
    """The server closed the connection before it sent a byte of its answer."""


async def one_stream(client: httpx.AsyncClient, target: Target) -> Stream:
    """One streamed request. A connection the server drops before answering (as
    ``mlx_lm.server`` does when more connections arrive at once than its listen
    backlog of 5 holds) is tried again, at most MAX_REFUSED times, and counted:
    its TTFT includes the retries."""
    sent = time.perf_counter()
    for refused in range(MAX_REFUSED + 1):
        try:
            return await _one_stream(client, target, sent, refused)
        except Refused:
            continue
        except httpx.HTTPError as error:
            raise RuntimeError(f"{target.url}: {type(error).__name__}: {error}") from error
    raise RuntimeError(f"{target.url}: the server dropped the connection {MAX_REFUSED + 1} times")


async def _one_stream(
    client: httpx.AsyncClient, target: Target, sent: float, refused: int
) -> Stream:
    first = last = 0.0
    tokens = 0
    gaps: list[float] = []
    finished = False
    try:
        response = await client.send(
            client.build_request("POST", target.url, json=target.body), stream=True
        )
    except (httpx.ReadError, httpx.RemoteProtocolError) as error:
        raise Refused from error
    try:
        if response.status_code != 200:
            text = (await response.aread()).decode("utf-8", "replace")
            raise RuntimeError(f"{target.url} answered {response.status_code}: {text}")
        async for line in response.aiter_lines():
            found = target.content(line)
            if found is None:
                finished = True
                break
            if found:
                now = time.perf_counter()
                if tokens == 0:
                    first = now
                else:
                    gaps.append(now - last)
                last = now
                tokens += 1
    finally:
        await response.aclose()
    if not finished or tokens == 0:
        raise RuntimeError(f"{target.url}: stream ended early after {tokens} tokens")
    return Stream(
        ttft=first - sent, tokens=tokens, span=last - first, gaps=tuple(gaps), refused=refused
    )


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy since boot."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


async def quiet(limit: float) -> float:
    """Wait (up to about ``limit`` seconds) until other processes leave the CPUs nearly
    idle; return the seconds waited beyond the first sample. Between batches only the
    bench's own servers run, and they are idle then."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        before = machine_busy()
        await asyncio.sleep(QUIET_WINDOW)
        if (machine_busy() - before) / QUIET_WINDOW < QUIET_CORES:
            break
    return max(0.0, time.monotonic() - start - QUIET_WINDOW)


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


class CpuMeter:
    """CPU seconds used by the backend, a path's in-between process ("between": the
    gateway or the relay; none for the direct path), this process and everything else
    (including an in-between process of another path)."""

    def __init__(self, backend_pid: int, between: Mapping[str, int]) -> None:
        self.backend = psutil.Process(backend_pid)
        procs = {pid: psutil.Process(pid) for pid in set(between.values())}
        self.between = {path: procs[pid] for path, pid in between.items()}

    def read(self, path: str) -> dict[str, float]:
        between = self.between.get(path)
        return {
            "backend": cpu_seconds(self.backend),
            "between": cpu_seconds(between) if between is not None else 0.0,
            "client": time.process_time(),
            "machine": machine_busy(),
        }

    @staticmethod
    def used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        used = {k: after[k] - before[k] for k in before}
        machine = used.pop("machine")
        used["other"] = max(0.0, machine - sum(used.values()))
        return used


async def one_batch(
    client: httpx.AsyncClient, targets: dict[str, Target], path: str, streams: int, meter: CpuMeter
) -> Batch:
    target = targets[path]
    before = meter.read(path)
    start = time.perf_counter()
    results = await asyncio.gather(*(one_stream(client, target) for _ in range(streams)))
    wall = time.perf_counter() - start
    after = meter.read(path)
    return Batch(wall, tuple(results), meter.used(before, after))


async def measure(
    targets: dict[str, Target], runs: int, meter: CpuMeter, levels: tuple[int, ...]
) -> dict[int, dict[str, Series]]:
    paths = tuple(targets)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    timeout = httpx.Timeout(120.0)
    results: dict[int, dict[str, Series]] = {}
    waited = 0.0  # on waits for a quiet machine, against QUIET_BUDGET
    async with httpx.AsyncClient(trust_env=False, timeout=timeout, limits=limits) as client:
        for level in levels:
            for _ in range(warmups(level)):
                for path in paths:
                    await one_batch(client, targets, path, level, meter)
            series = {path: Series() for path in paths}
            for index in range(batches(level, runs)):
                order = paths if index % 2 == 0 else tuple(reversed(paths))
                for path in order:
                    waited += await quiet(min(QUIET_WAIT, max(0.0, QUIET_BUDGET - waited)))
                    batch = await one_batch(client, targets, path, level, meter)
                    series[path].batches.append(batch)
            results[level] = series
            for path in paths:
                s = series[path]
                print(
                    f"{level} stream(s)  {path:18s} {s.tokens_per_s:8.1f} tok/s  "
                    f"TTFT {s.ttft_ms:7.2f} ms  p99 gap {s.p99_gap_ms:6.1f} ms",
                    flush=True,
                )
    return results


# -- the gateway and its server


def isolated_env(root: Path) -> dict[str, str]:
    """:func:`bench.report.isolated_env` with all state under ``root / "state"`` (the
    suites keep their model and logs beside it, in ``root``)."""
    return report.isolated_env(root / "state")


def start_gateway(
    manifest: Path, env: Mapping[str, str], log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``mlx-lama serve -f manifest`` on a free port in its own session, its output
    in ``log``; return it and its URL."""
    port = free_port()
    with log.open("wb") as out:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "mlx_lama", "serve", "-f", str(manifest)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**env, "MLX_LAMA_HOST": f"127.0.0.1:{port}"},
            start_new_session=True,
        )
    return gateway, f"http://127.0.0.1:{port}"


def build(root: Path, backend: str = "mlx-lm") -> tuple[Path, dict[str, str], int]:
    """The manifest (the tiny model, served ``always`` by ``backend``), the gateway's
    environment and the backend's port."""
    env = isolated_env(root)
    model = make_tiny_model(root / "model", seed=0)
    port = free_port()
    manifest = root / "mlxlama.toml"
    # vllm-mlx answers one request at a time unless it batches continuously.
    args = 'args = ["--continuous-batching"]\n' if backend == "vllm-mlx" else ""
    manifest.write_text(
        f'version = 1\n\n[models."{MODEL}"]\npath = "{model}"\nbackend = "{backend}"\n'
        f'serve = "always"\nport = {port}\n{args}',
        encoding="utf-8",
    )
    return manifest, env, port


def wait_ready(url: str, gateway: subprocess.Popen[bytes], log: Path, model: str = MODEL) -> int:
    """Poll ``/health`` until ``model`` is ready; return its server's PID."""
    deadline = time.monotonic() + READY_TIMEOUT
    with httpx.Client(trust_env=False, timeout=2.0) as client:
        while True:
            if gateway.poll() is not None:
                raise SystemExit(f"the gateway exited with {gateway.returncode}:\n{tail(log)}")
            with suppress(httpx.HTTPError, ValueError):
                entry = client.get(url + "/health").json()["models"][model]
                if entry["state"] == "ready":
                    return int(entry["pid"])
                if entry["state"] == "failed":
                    raise SystemExit(f"the model failed to start: {entry}\n{tail(log)}")
            if time.monotonic() > deadline:
                raise SystemExit(f"not ready after {READY_TIMEOUT:.0f}s:\n{tail(log)}")
            time.sleep(0.25)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def start_relay(backend_port: int, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``bench.relay`` in front of the backend in its own session; return it and
    its port once it says it is listening."""
    port = free_port()
    with log.open("wb") as err:
        relay = subprocess.Popen(
            [sys.executable, "-m", "bench.relay", str(backend_port), str(port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=Path(__file__).resolve().parents[1],
            start_new_session=True,
        )
    assert relay.stdout is not None
    readable, _, _ = select.select([relay.stdout], [], [], RELAY_READY_TIMEOUT)
    line = relay.stdout.readline() if readable else b""
    relay.stdout.close()  # it prints nothing more
    if line.strip() != b"ready":
        stop_process(relay, 5)
        raise SystemExit(f"the relay did not start (said {line!r}):\n{tail(log)}")
    return relay, port


def stop_process(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM, up to ``grace`` seconds to exit, then SIGKILL; then SIGKILL to anything
    left in its process group (it was started in its own session)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything it left in its group


def stop_recorded_servers(home: Path) -> list[int]:
    """Stop every server a run record in ``home`` names (if it is still the recorded
    process); return the PIDs that were recorded."""
    pids = []
    for path in sorted((home / "run").glob("*.json")):
        with suppress(OSError, ValueError, KeyError, psutil.Error):
            record = json.loads(path.read_text())
            pid = int(record["pid"])
            pids.append(pid)
            proc = psutil.Process(pid)
            if abs(proc.create_time() - float(record["process_started"])) >= 1.0:
                continue  # the PID was reused: not ours
            proc.terminate()
            try:
                proc.wait(15)
            except psutil.TimeoutExpired:
                with suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                proc.wait(10)
    return pids


def survivors(pids: list[int]) -> list[int]:
    left = []
    for pid in pids:
        with suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                left.append(pid)
    return left


# vllm-mlx warns on every start that it has no API key; its servers listen on 127.0.0.1 only.
NO_API_KEY = "Server running without API key authentication"


def report_problems(path: Path) -> None:
    """Print the lines of a server log that speak of errors (there should be none), but
    vllm-mlx's warning that it runs without an API key."""
    words = ("Traceback", "ERROR", "Error", "Exception", "WARNING")
    found = [
        line
        for line in tail(path, 100_000).splitlines()
        if any(w in line for w in words) and NO_API_KEY not in line
    ]
    if found:
        shown = "\n".join(found[:40])
        print(f"{len(found)} problem line(s) in {path.name}:\n{shown}", file=sys.stderr)


def main(runs: int = 15) -> None:
    """``runs`` sets the timed batches per path and level (see :func:`batches`)."""
    started = time.monotonic()
    results = {backend: run_backend(backend, runs) for backend in BACKENDS}
    write_section("gateway", render(results))
    print(f"done in {time.monotonic() - started:.0f}s", flush=True)


def run_backend(backend: str, runs: int) -> dict[int, dict[str, Series]]:
    """Every level and path of :data:`BACKENDS` for ``backend``: a gateway serving the
    tiny model on it, started here and stopped before this returns."""
    levels, paths = BACKENDS[backend]
    root = Path(tempfile.mkdtemp(prefix="mlx-lama-bench-gateway-"))
    gateway: subprocess.Popen[bytes] | None = None
    relay: subprocess.Popen[bytes] | None = None
    watched: list[int] = []
    home = root / "state" / "mlx-lama-home"
    started = time.monotonic()
    try:
        manifest, env, backend_port = build(root, backend)
        log = root / "gateway.log"
        gateway, gateway_url = start_gateway(manifest, env, log)
        watched.append(gateway.pid)
        backend_pid = wait_ready(gateway_url, gateway, log)
        watched.append(backend_pid)
        backend_url = f"http://127.0.0.1:{backend_port}"
        # mlx_lm.server loads whatever ``model`` names; vllm-mlx wants its served name.
        direct_model = MODEL if backend == "vllm-mlx" else None
        targets = {
            DIRECT: Target(
                backend_url + "/v1/chat/completions", openai_body(direct_model), sse_content
            ),
            GATEWAY: Target(gateway_url + "/v1/chat/completions", openai_body(MODEL), sse_content),
            OLLAMA: Target(gateway_url + "/api/chat", ollama_body(), ndjson_content),
        }
        between = {GATEWAY: gateway.pid, OLLAMA: gateway.pid}
        if RELAY in paths:
            relay, relay_port = start_relay(backend_port, root / "relay.log")
            watched.append(relay.pid)
            relay_url = f"http://127.0.0.1:{relay_port}"
            targets[RELAY] = Target(
                relay_url + "/v1/chat/completions", openai_body(direct_model), sse_content
            )
            between[RELAY] = relay.pid
        targets = {path: targets[path] for path in paths}
        print(f"{backend}: ready after {time.monotonic() - started:.1f}s", flush=True)
        meter = CpuMeter(backend_pid, {p: pid for p, pid in between.items() if p in paths})
        results = asyncio.run(measure(targets, runs, meter, levels))
        for path in (log, root / "relay.log", home / "logs" / f"{MODEL}.log"):
            if path.exists():
                report_problems(path)
        return results
    except BaseException:
        for path in (root / "gateway.log", root / "relay.log", home / "logs" / f"{MODEL}.log"):
            print(f"--- last lines of {path.name} ---\n{tail(path)}", file=sys.stderr)
        raise
    finally:
        if relay is not None:
            stop_process(relay, 10)
            if relay.returncode != 0:
                print(f"the relay exited with {relay.returncode}", file=sys.stderr)
        tear_down(gateway, home, root, watched)


def tear_down(
    gateway: subprocess.Popen[bytes] | None, home: Path, root: Path, watched: list[int]
) -> None:
    """Stop the gateway and every recorded server, delete ``root``, and fail loudly
    if any of ``watched`` (or the servers) survived."""
    if gateway is not None:
        stop_process(gateway, 60)
    watched.extend(stop_recorded_servers(home))
    shutil.rmtree(root, ignore_errors=True)
    left = survivors(watched)
    if left:
        raise SystemExit(f"processes left behind: {left}")


# -- the report


def verdict(met: bool) -> str:
    return "met" if met else "not met"


Results = dict[int, dict[str, Series]]  # level -> path -> series, for one engine


def render(by_engine: dict[str, Results]) -> str:
    rows, derived, cpu = [], [], []
    for engine, results in by_engine.items():
        for level, series in results.items():
            direct = series[DIRECT]
            for path, s in series.items():
                low = min(b.tokens_per_s for b in s.batches)
                high = max(b.tokens_per_s for b in s.batches)
                rows.append(
                    f"| {engine} | {level} | {path} | {len(s.batches)} "
                    f"| {s.tokens_per_s:.0f} ({low:.0f}-{high:.0f}) "
                    f"| {s.stream_tokens_per_s:.0f} | {s.ttft_ms:.1f} | {s.late}/{s.count} "
                    f"| {s.on_time_ttft_ms:.1f} | {s.p99_gap_ms:.1f} | {s.refused} |"
                )
                between = "-" if path == DIRECT else f"{s.cpu_ms_per_1k_tokens('between'):.0f}"
                cpu.append(
                    f"| {engine} | {level} | {path} | {s.cpu_ms_per_1k_tokens('backend'):.0f} "
                    f"| {between} | {s.cpu_ms_per_1k_tokens('client'):.0f} "
                    f"| {s.cores('backend', 'between', 'client'):.2f} | {s.cores('other'):.2f} |"
                )
            for path in (p for p in (RELAY, GATEWAY, OLLAMA) if p in series):
                derived.extend(_derived(engine, level, series[path], path, direct))
    counts = sorted(
        {
            s.tokens
            for results in by_engine.values()
            for by_path in results.values()
            for x in by_path.values()
            for s in x.streams()
        }
    )
    levels = ", ".join(
        f"{engine}: {', '.join(map(str, results))}" for engine, results in by_engine.items()
    )
    rows_text, derived_text, cpu_text = "\n".join(rows), "\n".join(derived), "\n".join(cpu)
    setup = f"""The tiny random-weight test model (2 layers, hidden size 64) served
as a `serve = "always"` model of `mlx-lama serve` by `mlx_lm.server` and, in a
second run, by `vllm-mlx --continuous-batching` (MLX {version("mlx")}, CPU).
Each request is a streamed chat completion of `max_tokens = {MAX_TOKENS}` at
temperature 0 (content events per stream: {", ".join(map(str, counts))}).
The paths: the engine's own port (OpenAI SSE); for mlx-lm also a bare relay in
front of it (`bench/relay.py`: one uvloop process that forwards the request
and copies the response bytes as they arrive, parsing nothing but the request
head), the floor cost of any process between the client and the engine; the
gateway's `/v1/chat/completions` (SSE passed through, `model` rewritten in
every event); and for mlx-lm the gateway's `/api/chat` (Ollama NDJSON
translated from the engine's SSE). One asyncio httpx client on the same
machine sends batches of parallel streams ({levels}): warm-up batches per
path, then the timed batches, the paths interleaved batch by batch (order
reversed every round)."""
    cpu_intro = f"""CPU time per 1000 streamed tokens (ms) over the timed batches of the
engine, of the process in between (the relay or the gateway; none on the
direct path) and of the client, the cores these kept busy together, and the
cores anything else on the machine used meanwhile (before each timed batch
the script waits, up to {QUIET_WAIT:.0f} s and {QUIET_BUDGET:.0f} s in all, until other
processes use under {QUIET_CORES} of a core):"""
    reading = f"""How to read it: aggregate tokens/s is all content events of a batch over the
batch's wall time (median over batches); the ratio divides a path's median by
the direct median at the same level. TTFT runs from sending the request to
the first event with content; added TTFT is a path's median minus the direct
median. The p99 inter-token gap is the 99th percentile of the pauses between
consecutive content events of every stream. The engine, the process in
between and the client share the machine's cores, so every CPU millisecond
spent in between (and by the client reading its output) per token is one the
engine cannot use: on a small machine the ratio measures the CPU cost per
token more than latency. The bare relay does nothing but move the bytes
through one more process, write for write, so its ratio is the floor of a
relay that copies as it reads. Generation itself is bounded by the engine's
own rate with nothing else on the machine; the direct path is not quite that,
since the client wakes for every write the engine makes. The gateway writes to
a client at most once per `[server] flush_interval` (default 3 ms; tokens that
come sooner go out together), so at the tiny model's rate its client wakes
less often than the direct path's, and its ratio can exceed 1 (see the
`flush_interval` section for the same engine with an interval of 0).
{findings(by_engine["mlx-lm"]) if "mlx-lm" in by_engine else ""}"""
    batching = f"""With several streams the engine decides the figures: `mlx_lm.server`
admits new requests into its running batch only between 0.5 s decode slices,
so a stream that misses the first admission waits for the next one ("late
starts": TTFT above {LATE_START * 1000:.0f} ms). Which streams are late depends on
arrival jitter of a millisecond or so, so the multi-stream tokens/s are bimodal
and vary from run to run by more than the gateway's effect; read the 1-stream
rows for the gateway's own cost. Streams admitted together get their first
token from the same engine step, after the last of them has arrived, so the
on-time TTFT through the gateway is mostly how much later it hands the last of
those requests to the engine, not a delay each stream pays on its own. When
more than half the streams start late, the plain TTFT median is a late
stream's and the added TTFT measures the engine's admission slices, not the
gateway. Even short of that, the plain medians move with how many streams of
each path happened to start late (see the bare relay, which adds nothing of
its own), so the derived table also compares the on-time streams alone: that
difference is the delay the path itself adds before the engine starts a
stream. Both are reported, with the target applied to each."""
    side_by_side, charts = _side_by_side(by_engine)
    return f"""## Streaming through the gateway vs straight to the engine

{wrap(setup)}

Ours (the gateway) beside the peer (the engine's own port), medians with min
and max over the timed batches; TTFT is each batch's median:

{side_by_side}
{charts}

| engine | streams | path | batches | aggregate tokens/s, median (min-max) \
| per-stream tokens/s, median | TTFT median (ms) | late starts \
| TTFT median, on-time streams (ms) | p99 inter-token gap (ms) | dropped connections |
|---|---|---|---|---|---|---|---|---|---|---|
{rows_text}

| engine | streams | derived | value | target |
|---|---|---|---|---|
{derived_text}

{wrap(cpu_intro)}

| engine | streams | path | engine CPU | in between (relay or gateway) | client \
| cores busy | other processes |
|---|---|---|---|---|---|---|---|
{cpu_text}

{wrap(reading)}

{wrap(batching)}

Machine: {machine()}; {versions("mlx-lama", "mlx-lm", "vllm-mlx")}.
Command: `uv run --all-extras python -m bench gateway`
"""


def _derived(engine: str, level: int, s: Series, path: str, direct: Series) -> list[str]:
    """The ratio and added-TTFT rows of ``path`` against the direct path, with the
    gateway's targets applied to the gateway SSE path."""
    ratio = s.tokens_per_s / direct.tokens_per_s
    added = s.ttft_ms - direct.ttft_ms
    if path == GATEWAY:
        ratio_target = f">= {RATIO_TARGET} ({verdict(ratio >= RATIO_TARGET)})"
        ttft_target = f"<= {ADDED_TTFT_TARGET_MS:.0f} ms ({verdict(added <= ADDED_TTFT_TARGET_MS)})"
    elif path == RELAY:
        ratio_target = ttft_target = "- (floor: a relay that only copies bytes)"
    else:
        ratio_target = ttft_target = "- (no target)"
    lines = [
        f"| {engine} | {level} | tokens/s ratio, {path} / {DIRECT} | {ratio:.3f} "
        f"| {ratio_target} |",
        f"| {engine} | {level} | added TTFT, {path} - {DIRECT} | {added:+.1f} ms | {ttft_target} |",
    ]
    if s.late or direct.late:
        # Late starts wait for the engine's next admission slice whichever path they
        # took; compared alone, the on-time streams show the path's own delay.
        on_time = s.on_time_ttft_ms - direct.on_time_ttft_ms
        on_time_target = (
            f"<= {ADDED_TTFT_TARGET_MS:.0f} ms ({verdict(on_time <= ADDED_TTFT_TARGET_MS)})"
            if path == GATEWAY
            else ttft_target
        )
        lines.append(
            f"| {engine} | {level} | added TTFT of on-time streams, {path} - {DIRECT} "
            f"| {on_time:+.1f} ms | {on_time_target} |"
        )
    return lines


MEASURES = (("tokens", "aggregate tokens/s", "tok/s"), ("ttft", "TTFT", "ms"))


def _measured(series: Series, label: str, what: str) -> Measurement:
    unit = dict((w, u) for w, _, u in MEASURES)[what]
    return Measurement(label, series.samples(what), unit=unit)


def _side_by_side(by_engine: dict[str, Results]) -> tuple[str, str]:
    """The comparison table (gateway vs engine, and Ollama vs OpenAI through the
    gateway) and the charts, one per engine and measure."""
    comparisons: list[Comparison] = []
    charts = []
    for engine, results in by_engine.items():
        for what, title, _unit in MEASURES:
            drawn = []
            for level, series in results.items():
                n = f"{level} stream{'s' if level > 1 else ''}"
                ours = _measured(series[GATEWAY], f"gateway, {n}", what)
                peer = _measured(series[DIRECT], f"{engine} direct, {n}", what)
                drawn.append(Comparison(f"{engine}, {n}: {title}", ours, peer))
                if OLLAMA in series and what == "tokens":
                    ollama = _measured(series[OLLAMA], f"gateway /api/chat, {n}", what)
                    drawn.append(
                        Comparison(f"{engine}, {n}: {title}, /api/chat vs /v1", ollama, ours)
                    )
            comparisons.extend(drawn)
            charts.append(chart(f"gateway-{engine}-{what}", drawn, title=f"{engine}: {title}"))
    return comparison_table(comparisons), "\n".join(charts)


def wrap(paragraph: str) -> str:
    return textwrap.fill(" ".join(paragraph.split()), width=78, break_on_hyphens=False)


def findings(results: dict[int, dict[str, Series]]) -> str:
    """What the bare relay and the gateway SSE path cost at a single stream, from the
    data."""
    single = results.get(1)
    if single is None:
        return ""
    direct, relay, through = single[DIRECT], single[RELAY], single[GATEWAY]
    relay_ratio = relay.tokens_per_s / direct.tokens_per_s
    gateway_ratio = through.tokens_per_s / direct.tokens_per_s
    relay_ms = relay.cpu_ms_per_1k_tokens("between")
    gateway_ms = through.cpu_ms_per_1k_tokens("between")
    client_ms = through.cpu_ms_per_1k_tokens("client") - direct.cpu_ms_per_1k_tokens("client")
    backend_ms = direct.cpu_ms_per_1k_tokens("backend")
    through_backend_ms = through.cpu_ms_per_1k_tokens("backend")
    floor = (
        f"so on this machine even a relay that only copies bytes misses the "
        f">= {RATIO_TARGET} target"
        if relay_ratio < RATIO_TARGET
        else f"so the >= {RATIO_TARGET} target is within reach of a relay here"
    )
    client = f"{abs(client_ms):.0f} ms {'more' if client_ms >= 0 else 'less'}"
    return (
        f"Here, at 1 stream, the bare relay reaches a tokens/s ratio of {relay_ratio:.3f} "
        f"with {relay_ms:.0f} ms of relay CPU per 1000 tokens, {floor}. The gateway SSE "
        f"path reaches {gateway_ratio:.3f} ({gateway_ratio / relay_ratio:.3f} of the "
        f"relay's tokens/s) with {gateway_ms:.0f} ms of gateway CPU per 1000 tokens, while "
        f"the client uses {client} CPU per 1000 tokens than on the direct path; the "
        f"backend's own CPU per 1000 tokens is {backend_ms:.0f} ms direct and "
        f"{through_backend_ms:.0f} ms through the gateway, and the per-stream rate goes "
        f"from {direct.stream_tokens_per_s:.0f} to {through.stream_tokens_per_s:.0f} "
        "tokens/s."
    )
