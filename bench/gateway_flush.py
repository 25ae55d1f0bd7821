"""The gateway's ``[server] flush_interval``: its default against 0, on one engine.

What it measures: streamed chat completions of the tiny random-weight model
served by ``mlx_lm.server``, at 1 and 8 concurrent streams, sent (a) directly
to the engine, (b) through a gateway whose ``flush_interval`` is 0 (every read
from the engine written to the client at once) and (c) through a gateway with
the default interval (writes to a client at least that far apart; what comes
sooner goes out together). Reported per path: aggregate tokens/s and its ratio
to the direct path, TTFT, the p99 pause between tokens, and the CPU per 1000
tokens of the engine, the gateway and this client.

How: as ``bench/gateway.py`` does (same client, batches, interleaving and CPU
meter). Gateway (c) serves the model (``serve = "always"``). Gateway (b) is a
second ``mlx-lama serve`` with its own home whose manifest routes to that same
engine as an external model named ``default_model``: the external route sends
its manifest name as the request's ``model``, and ``default_model`` is what
``mlx_lm.server`` takes for the model it was started with. Both gateways relay
streams the same way; only the interval differs.

What it must not do: tune anything to meet a target, or leave a process
behind (both gateways and the engine are stopped, and checked with psutil).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench import gateway as bench
from bench.report import machine, versions, write_section
from mlx_lama.schema.manifest import DEFAULT_FLUSH_INTERVAL

LEVELS = (1, 8)
UNGATHERED = "gateway, flush_interval 0"
GATHERED = f"gateway, flush_interval {DEFAULT_FLUSH_INTERVAL} (default)"
PATHS = (bench.DIRECT, UNGATHERED, GATHERED)


def main(runs: int = 15) -> None:
    started = time.monotonic()
    results = measure_both(runs)
    write_section("flush", render(results))
    print(f"done in {time.monotonic() - started:.0f}s", flush=True)


def measure_both(runs: int) -> bench.Results:
    root = Path(tempfile.mkdtemp(prefix="mlx-lama-bench-flush-"))
    home = root / "state" / "mlx-lama-home"
    gathered = ungathered = None
    watched: list[int] = []
    try:
        manifest, env, port = bench.build(root)
        log = root / "gateway.log"
        gathered, gathered_url = bench.start_gateway(manifest, env, log)
        watched.append(gathered.pid)
        backend_pid = bench.wait_ready(gathered_url, gathered, log)
        watched.append(backend_pid)
        second = root / "second"
        second.mkdir()
        second_manifest = second / "mlxlama.toml"
        second_manifest.write_text(
            'version = 1\n\n[server]\nflush_interval = 0\n\n[models."default_model"]\n'
            f'backend = "external"\nurl = "http://127.0.0.1:{port}"\n',
            encoding="utf-8",
        )
        second_log = second / "gateway.log"
        second_env = bench.isolated_env(second)
        ungathered, ungathered_url = bench.start_gateway(second_manifest, second_env, second_log)
        watched.append(ungathered.pid)
        wait_listening(ungathered_url, ungathered, second_log)
        chat = "/v1/chat/completions"
        targets = {
            bench.DIRECT: bench.Target(
                f"http://127.0.0.1:{port}{chat}", bench.openai_body(None), bench.sse_content
            ),
            UNGATHERED: bench.Target(
                ungathered_url + chat, bench.openai_body("default_model"), bench.sse_content
            ),
            GATHERED: bench.Target(
                gathered_url + chat, bench.openai_body(bench.MODEL), bench.sse_content
            ),
        }
        meter = bench.CpuMeter(backend_pid, {GATHERED: gathered.pid, UNGATHERED: ungathered.pid})
        results = asyncio.run(bench.measure(targets, runs, meter, LEVELS))
        for path in (log, second_log):
            bench.report_problems(path)
        return results
    except BaseException:
        for path in (root / "gateway.log", root / "second" / "gateway.log"):
            print(f"--- last lines of {path} ---\n{bench.tail(path)}", file=sys.stderr)
        raise
    finally:
        if ungathered is not None:
            bench.stop_process(ungathered, 60)
        bench.tear_down(gathered, home, root, watched)


def wait_listening(url: str, gateway: subprocess.Popen[bytes], log: Path) -> None:
    """Poll ``/api/version`` until the gateway answers."""
    deadline = time.monotonic() + bench.READY_TIMEOUT
    with httpx.Client(trust_env=False, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if gateway.poll() is not None:
                raise RuntimeError(f"the second gateway exited:\n{bench.tail(log)}")
            try:
                if client.get(url + "/api/version").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"the second gateway did not answer in time:\n{bench.tail(log)}")


def render(results: bench.Results) -> str:
    rows = []
    for level in LEVELS:
        series = results[level]
        direct = series[bench.DIRECT]
        for path in PATHS:
            s = series[path]
            ratio = s.tokens_per_s / direct.tokens_per_s
            rows.append(
                f"| {level} | {path} | {s.tokens_per_s:.0f} | {ratio:.3f} | {s.ttft_ms:.1f} "
                f"| {s.p99_gap_ms:.1f} | {s.cpu_ms_per_1k_tokens('backend'):.0f} "
                f"| {_between(s, path)} | {s.cpu_ms_per_1k_tokens('client'):.0f} |"
            )
    one = results[1]
    gathered, ungathered = one[GATHERED], one[UNGATHERED]
    gain = gathered.tokens_per_s / ungathered.tokens_per_s
    client = (
        ungathered.cpu_ms_per_1k_tokens("client"),
        gathered.cpu_ms_per_1k_tokens("client"),
    )
    engine = (
        ungathered.cpu_ms_per_1k_tokens("backend"),
        gathered.cpu_ms_per_1k_tokens("backend"),
    )
    gap = (ungathered.p99_gap_ms, gathered.p99_gap_ms)
    every = 1000 / one[bench.DIRECT].stream_tokens_per_s
    return "\n".join(
        [
            "## Gateway: `flush_interval`",
            "",
            bench.wrap(
                "Streamed chat completions of the tiny model on mlx_lm.server, straight to "
                "the engine and through two gateways in front of the same engine, one with "
                f"`[server] flush_interval = 0` and one with the default "
                f"({DEFAULT_FLUSH_INTERVAL}); batches interleaved as in the gateway section. "
                "Ratio: tokens/s over the direct path's. CPU in ms per 1000 tokens."
            ),
            "",
            "| streams | path | tokens/s | ratio | TTFT ms | p99 gap ms | engine CPU "
            "| gateway CPU | client CPU |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            bench.wrap(
                f"At 1 stream the default interval gives {gain:.3f} times the tokens/s of "
                f"an interval of 0. The tiny model makes a token about every {every:.1f} ms "
                f"here, so with the default the tokens of each {DEFAULT_FLUSH_INTERVAL} go "
                "out in one write and the client wakes that much less often: its CPU per "
                f"1000 tokens goes from {client[0]:.0f} to {client[1]:.0f} ms, and on this "
                "2-core machine the engine gets the cores sooner (its own CPU per 1000 "
                f"tokens: {engine[0]:.0f} and {engine[1]:.0f} ms). The price is latency: "
                f"the p99 pause between tokens goes from {gap[0]:.1f} to {gap[1]:.1f} ms, "
                "and a token waits at most about the interval. A model slower than one "
                "token per interval has each written as it comes. With several streams "
                "the figures move with mlx_lm.server's admission of new requests (see "
                "the gateway section) more than with the interval."
            ),
            "",
            f"Machine: {machine()}; {versions('mlx-lama', 'mlx-lm')}.",
            "Command: `uv run --all-extras python -m bench flush`",
        ]
    )


def _between(series: bench.Series, path: str) -> str:
    return "-" if path == bench.DIRECT else f"{series.cpu_ms_per_1k_tokens('between'):.0f}"
