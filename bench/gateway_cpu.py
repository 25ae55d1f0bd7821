"""CPU per streamed request in the gateway, against the bare relay's.

Usage: ``uv run --all-extras python -m bench.gateway_cpu [--fake] [--base SRC]
[--tokens N] [--streams S] [ROUNDS] [REPEATS]``.

Why CPU and not time: at 8 concurrent streams ``mlx_lm.server`` admits the
batch once the last request has arrived, and the gateway handles the 8
requests one after another on one event loop, so the time-to-first-token it
adds is about 8 times its CPU per request. CPU seconds of one process are
also robust against whatever else runs on a small machine, which wall-clock
figures are not.

How: the same setup as ``bench.gateway`` (the tiny model as a ``serve =
"always"`` model of ``mlx-lama serve`` in a temporary home, and
``bench.relay`` in front of its backend). A raw asyncio client sends batches
of 8 concurrent one-token streams (``Connection: close``, the whole answer
read); per repeat and path, ROUNDS batches are sent and the CPU seconds of
the process in between (gateway or relay, from psutil), less what it uses
when idle (the gateway's scheduler and supervisor ticks), are divided by the
requests. Paths are interleaved repeat by repeat. Prints the median and range
over the repeats, in microseconds per request, and the time to each stream's
first token (TTFT) from the start of its batch, the direct path included.
Nothing is written to docs/benchmarks.md; nothing is left running.

``--base SRC`` runs a second gateway from another checkout's ``src`` folder
(``PYTHONPATH``; e.g. ``git archive REV src | tar -x -C /tmp/base``) beside
this one, with its own home and backend, so a change is compared with its
baseline under the same conditions.

``--tokens N`` asks for N tokens per stream instead of one, and ``--streams S``
sends S concurrent streams per batch instead of 8: ``--tokens 256 --streams 1``
measures the cost per streamed token (what the 1-stream tokens/s ratio of
``bench.gateway`` comes down to), reported as CPU per 1000 tokens (the tokens
counted in each answer).

``--fake`` serves the model from a canned one-token answer instead (an
``external`` model pointing at a stub in this process): no scheduler lease, but
a hundred times faster than waiting for ``mlx_lm.server``'s admission slices,
for quick comparisons while changing the gateway.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psutil

from bench.gateway import (
    MODEL,
    build,
    isolated_env,
    start_gateway,
    start_relay,
    stop_process,
    stop_recorded_servers,
    survivors,
    tail,
    wait_ready,
)

STREAMS = 8  # concurrent streams per batch, unless --streams says otherwise


def cpu_seconds(proc: psutil.Process) -> float:
    """CPU seconds of ``proc``'s threads from /proc/PID/task/*/schedstat (nanoseconds;
    psutil's clock ticks are 10 ms, too coarse for a few hundred requests)."""
    total = 0
    for task in Path(f"/proc/{proc.pid}/task").iterdir():
        with suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


PROMPT = [{"role": "user", "content": "hello"}]


def request_bytes(port: int, path: str, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/json\r\nAccept: */*\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + payload


def paths(
    backend_port: int, gateway_ports: dict[str, int], relay_port: int, tokens: int
) -> dict[str, tuple[int, bytes]]:
    openai = {"messages": PROMPT, "max_tokens": tokens, "stream": True, "temperature": 0}
    ollama = {
        "model": MODEL,
        "messages": PROMPT,
        "stream": True,
        "options": {"num_predict": tokens, "temperature": 0},
    }
    sse = "/v1/chat/completions"
    targets = {
        "direct SSE": (backend_port, request_bytes(backend_port, sse, openai)),
        "relay SSE": (relay_port, request_bytes(relay_port, sse, openai)),
    }
    for prefix, port in gateway_ports.items():
        named = {"model": MODEL, **openai}
        targets[f"{prefix} SSE"] = (port, request_bytes(port, sse, named))
        targets[f"{prefix} NDJSON"] = (port, request_bytes(port, "/api/chat", ollama))
    return targets


_CONTENT = re.compile(rb'"content": ?"[^"]')  # a token, in SSE or NDJSON


async def one(port: int, request: bytes, start: float) -> tuple[float, int]:
    """Send ``request``, read the whole answer; the seconds from ``start`` until its
    first token arrived, and its tokens."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    pieces: list[bytes] = []
    first = 0.0
    while data := await reader.read(65536):
        pieces.append(data)
        if not first and _CONTENT.search(b"".join(pieces[-2:])):  # a token split by reads
            first = time.perf_counter() - start
    writer.close()
    answer = b"".join(pieces)
    if b" 200 " not in answer.split(b"\r\n", 1)[0] or b"error" in answer or not first:
        raise RuntimeError(f"bad answer: {answer[:500]!r}")
    return first, len(_CONTENT.findall(answer))


class Arrivals:
    """When the stub backend has received each whole request (perf_counter seconds)."""

    def __init__(self) -> None:
        self.times: list[float] = []


async def rounds(
    port: int, request: bytes, count: int, arrivals: Arrivals, streams: int
) -> tuple[list[float], list[float], int]:
    """``count`` batches of ``streams``: per batch, the seconds from its start until the
    stub had the last of its requests (none without a stub), per stream its TTFT, and
    the tokens of all."""
    spans, ttfts, tokens = [], [], 0
    for _ in range(count):
        arrivals.times.clear()
        start = time.perf_counter()
        answers = await asyncio.gather(*(one(port, request, start) for _ in range(streams)))
        ttfts += [ttft for ttft, _ in answers]
        tokens += sum(n for _, n in answers)
        if len(arrivals.times) == streams:
            spans.append(max(arrivals.times) - start)
    return spans, ttfts, tokens


@dataclass
class Result:
    cpu_us: list[float] = field(default_factory=list)  # per request, one value per repeat
    cpu_ms_1k: list[float] = field(default_factory=list)  # per 1000 tokens, one per repeat
    tokens: list[float] = field(default_factory=list)  # per request, one value per repeat
    forward_ms: list[float] = field(default_factory=list)  # per batch (stub only)
    ttft_ms: list[float] = field(default_factory=list)  # per stream, from its batch's start


IDLE_WINDOW = 5.0  # s the processes in between are watched doing nothing


async def idle_rates(procs: dict[str, psutil.Process | None]) -> dict[int, float]:
    """CPU seconds per second each process in between uses with no request (the
    gateway's scheduler and supervisor tick), to take off what the batches used."""
    unique = {proc.pid: proc for proc in procs.values() if proc is not None}
    before = {pid: cpu_seconds(proc) for pid, proc in unique.items()}
    start = time.perf_counter()
    await asyncio.sleep(IDLE_WINDOW)
    elapsed = time.perf_counter() - start
    return {pid: (cpu_seconds(proc) - before[pid]) / elapsed for pid, proc in unique.items()}


async def measure(
    targets: dict[str, tuple[int, bytes]],
    procs: dict[str, psutil.Process | None],
    count: int,
    repeats: int,
    arrivals: Arrivals,
    streams: int,
) -> tuple[dict[str, Result], dict[int, float]]:
    for port, request in targets.values():
        await rounds(port, request, 3, arrivals, streams)  # warm-up
    idle = await idle_rates(procs)
    results = {name: Result() for name in targets}
    order = list(targets)
    for index in range(repeats):
        for name in order if index % 2 == 0 else reversed(order):
            port, request = targets[name]
            proc = procs[name]
            before = cpu_seconds(proc) if proc is not None else 0.0
            start = time.perf_counter()
            spans, ttfts, tokens = await rounds(port, request, count, arrivals, streams)
            results[name].tokens.append(tokens / (count * streams))
            if proc is not None:
                used = cpu_seconds(proc) - before
                used -= idle[proc.pid] * (time.perf_counter() - start)
                results[name].cpu_us.append(used / (count * streams) * 1e6)
                results[name].cpu_ms_1k.append(used / max(tokens, 1) * 1e6)
            results[name].forward_ms.extend(span * 1000 for span in spans)
            results[name].ttft_ms.extend(ttft * 1000 for ttft in ttfts)
    return results, idle


# What mlx_lm.server 0.31 sends in a stream with usage (captured), event by event.
_EVENT = (
    '{"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "default_model", '
    '"created": 1796487665, "choices": [{"index": 0, "finish_reason": %s, "delta": %s}]}'
)


def canned(tokens: int) -> list[bytes]:
    """The head and the events of a ``tokens``-token answer, in the order sent."""
    content = (_EVENT % ("null", '{"role": "assistant", "content": "during"}')).encode()
    usage = (
        '{"id": "chatcmpl-1", "object": "chat.completion", "model": "default_model", '
        '"created": 1796487665, "choices": [], "usage": {"prompt_tokens": 5, '
        f'"completion_tokens": {tokens}, "total_tokens": {tokens + 5}}}}}'
    ).encode()
    return [
        b"HTTP/1.0 200 OK\r\nServer: BaseHTTP/0.6 Python/3.11.7\r\n"
        b"Content-type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
        b": keepalive 1/1\n\n",
        *[b"data: %s\n\n" % content] * tokens,
        b"data: %s\n\n" % (_EVENT % ('"length"', '{"role": "assistant"}')).encode(),
        b"data: %s\n\n" % usage,
        b"data: [DONE]\n\n",
    ]


async def stub(
    arrivals: Arrivals, tokens: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """One request, one canned answer event by event, then close (as mlx_lm.server)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    arrivals.times.append(time.perf_counter())
    pause = 0.002 if tokens == 1 else 0.001
    for piece in canned(tokens):  # one write per event, a little apart, as a real engine
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(pause)
    writer.close()


def fake_manifest(root: Path, port: int) -> Path:
    manifest = root / "mlxlama.toml"
    manifest.write_text(
        f'version = 1\n\n[models."{MODEL}"]\nbackend = "external"\n'
        f'url = "http://127.0.0.1:{port}/v1"\n',
        encoding="utf-8",
    )
    return manifest


@dataclass
class Gateways:
    """The gateway(s) under test, by path prefix ("gateway", "base"), and their logs."""

    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    homes: list[Path] = field(default_factory=list)

    def start(self, prefix: str, manifest: Path, env: dict[str, str], log: Path) -> str:
        proc, url = start_gateway(manifest, env, log)
        self.procs[prefix] = proc
        self.ports[prefix] = int(url.rsplit(":", 1)[1])
        return url


def with_source(env: dict[str, str], source: str | None) -> dict[str, str]:
    return env if source is None else {**env, "PYTHONPATH": source}


async def listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited:\n{tail(log)}")
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"the gateway did not start:\n{tail(log)}") from None
            await asyncio.sleep(0.2)


async def run_fake(
    count: int, repeats: int, root: Path, base: str | None, shape: tuple[int, int]
) -> tuple[dict[str, Result], dict[int, float]]:
    tokens, streams = shape
    arrivals = Arrivals()
    server = await asyncio.start_server(partial(stub, arrivals, tokens), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    gateways = Gateways()
    relay = None
    try:
        for prefix, source, home in gateway_homes(root, base):
            log = home / "gateway.log"
            env = with_source(isolated_env(home), source)
            gateways.start(prefix, fake_manifest(home, port), env, log)
            await listening(gateways.ports[prefix], gateways.procs[prefix], log)
        relay, relay_port = start_relay(port, root / "relay.log")
        targets = paths(port, gateways.ports, relay_port, tokens)
        procs = between(targets, gateways, relay.pid)
        return await measure(targets, procs, count, repeats, arrivals, streams)
    finally:
        if relay is not None:
            stop_process(relay, 10)
        for proc in gateways.procs.values():
            stop_process(proc, 30)
        server.close()


def gateway_homes(root: Path, base: str | None) -> list[tuple[str, str | None, Path]]:
    """(prefix, source, new home folder) of each gateway to start: this checkout's,
    and ``base``'s when given."""
    found = []
    for prefix, source in (("gateway", None), ("base", base)):
        if prefix == "base" and base is None:
            continue
        home = root / prefix
        home.mkdir()
        found.append((prefix, source, home))
    return found


def run_real(
    count: int,
    repeats: int,
    root: Path,
    base: str | None,
    watched: list[int],
    shape: tuple[int, int],
) -> tuple[tuple[dict[str, Result], dict[int, float]], Gateways]:
    tokens, streams = shape
    gateways = Gateways()
    backend_port = 0
    relay = None
    try:
        for prefix, source, home in gateway_homes(root, base):
            manifest, env, port = build(home)
            backend_port = backend_port or port
            log = home / "gateway.log"
            url = gateways.start(prefix, manifest, with_source(env, source), log)
            watched.append(gateways.procs[prefix].pid)
            watched.append(wait_ready(url, gateways.procs[prefix], log))
        relay, relay_port = start_relay(backend_port, root / "relay.log")
        watched.append(relay.pid)
        targets = paths(backend_port, gateways.ports, relay_port, tokens)
        procs = between(targets, gateways, relay.pid)
        measured = measure(targets, procs, count, repeats, Arrivals(), streams)
        return asyncio.run(measured), gateways
    finally:
        if relay is not None:
            stop_process(relay, 10)


def between(
    targets: dict[str, tuple[int, bytes]], gateways: Gateways, relay: int
) -> dict[str, psutil.Process | None]:
    """The process each path goes through (none for the direct path)."""
    pids = {"relay": relay, **{prefix: proc.pid for prefix, proc in gateways.procs.items()}}
    return {
        name: psutil.Process(pids[name.split()[0]]) if name.split()[0] in pids else None
        for name in targets
    }


def _spread(values: list[float]) -> str:
    ordered = sorted(values)
    low, high = ordered[len(ordered) // 4], ordered[3 * len(ordered) // 4]
    return f"{statistics.median(ordered):5.2f} ms ({low:.2f}-{high:.2f})"


def report(
    measured: tuple[dict[str, Result], dict[int, float]],
    count: int,
    repeats: int,
    seconds: float,
    shape: tuple[int, int],
) -> None:
    results, idle = measured
    tokens, streams = shape
    what = "one-token" if tokens == 1 else f"{tokens}-token"
    print(
        f"{streams} concurrent {what} streams, {count} batches x {repeats} repeats "
        f"({seconds:.0f}s). CPU per request of the process in between, less its idle "
        f"CPU ({', '.join(f'{rate * 1000:.1f}' for rate in idle.values())} ms/s): median "
        "(min-max) over repeats; times: median (p25-p75)."
    )
    for name, result in results.items():
        cpu = result.cpu_us
        line = f"  {name:15s}"
        line += (
            f" CPU/request {statistics.median(cpu):4.0f} us ({min(cpu):.0f}-{max(cpu):.0f})"
            if cpu
            else " " * 34
        )
        if cpu and tokens > 1:
            per_1k = result.cpu_ms_1k
            line += (
                f"  per 1000 tokens {statistics.median(per_1k):5.1f} ms "
                f"({min(per_1k):.1f}-{max(per_1k):.1f}), "
                f"{statistics.median(result.tokens):.0f} tokens/request"
            )
        line += f"  TTFT {_spread(result.ttft_ms)}"
        if result.forward_ms:
            line += f"  last request at the stub {_spread(result.forward_ms)}"
        print(line)


def main(
    count: int = 25,
    repeats: int = 6,
    *,
    fake: bool = False,
    base: str | None = None,
    tokens: int = 1,
    streams: int = STREAMS,
) -> None:
    root = Path(tempfile.mkdtemp(prefix="mlx-lama-bench-gwcpu-"))
    watched: list[int] = []
    gateways = Gateways()
    started = time.monotonic()
    try:
        if fake:
            measured = asyncio.run(run_fake(count, repeats, root, base, (tokens, streams)))
        else:
            shape = (tokens, streams)
            measured, gateways = run_real(count, repeats, root, base, watched, shape)
        report(measured, count, repeats, time.monotonic() - started, (tokens, streams))
    finally:
        for proc in gateways.procs.values():
            stop_process(proc, 60)
        for prefix in gateways.procs:
            watched.extend(stop_recorded_servers(root / prefix / "state" / "mlx-lama-home"))
        shutil.rmtree(root, ignore_errors=True)
        left = survivors(watched)
        if left:
            raise SystemExit(f"processes left behind: {left}")


def _option(args: list[str], name: str) -> str | None:
    """The value after ``name`` in ``args`` (both taken out), or None."""
    if name not in args:
        return None
    at = args.index(name)
    value = args[at + 1]
    del args[at : at + 2]
    return value


if __name__ == "__main__":
    args = sys.argv[1:]
    source = _option(args, "--base")
    tokens = int(_option(args, "--tokens") or 1)
    streams = int(_option(args, "--streams") or STREAMS)
    numbers = [int(arg) for arg in args if arg != "--fake"]
    main(*numbers[:2], fake="--fake" in args, base=source, tokens=tokens, streams=streams)
