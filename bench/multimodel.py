"""Several models on demand: ``mlx-lama serve`` vs ``vllm-mlx serve --models-config``.

What it measures: three tiny random-weight test models served two ways, on
the same engine (vllm-mlx, its default single-request engine on both sides):

- ours: ``mlx-lama serve`` with the three models as ``serve = "on-demand"``,
  ``backend = "vllm-mlx"``: the gateway starts one ``vllm-mlx serve`` process
  per model on the model's first request and relays every request to it;
- the peer: one ``vllm-mlx serve --models-config FILE`` process with the same
  three models in its registry, each loaded into that process on its first
  request.

Both keep all three loaded (``max_loaded = 3`` and a 4 GB budget for ours, a
4 GB residency budget for the peer; nothing unloads within the run), so what
differs is the architecture: a process per model behind a gateway, or every
model inside one server. For each fresh start of a side: the seconds from
launch until it answers ``/health``; the first request to each model in turn
(cold: that model not loaded; the first of them finds nothing loaded at all);
after one discarded request per model, ``runs`` requests to each model in turn
(warm, the same model again); ``runs`` rounds over the three models (each
request to another model than the one before: the switching cost is their
TTFT median minus the warm one); and the memory of all the side's processes
(RSS and USS, with nothing loaded and with the three models loaded). Derived:
launch to first token (until ``/health`` answers, plus the first cold TTFT).
Every request is a streamed chat completion of ``max_tokens = MAX_TOKENS`` at
temperature 0; TTFT runs from sending it to the first event with content.

Why vllm-mlx and not mlx-lm on our side: the peer is vllm-mlx, so the same
engine on both sides leaves only the serving architecture to compare; an
``mlx_lm.server`` per model would add the differences between the engines (and
a third side would add about half again to a suite meant to take under 2.5
minutes on a 2-core machine).

Its table (ours beside the peer: medians with min and max, the ratio ours /
peer; ``bench.report.comparison_table``) and a paragraph on how to read it
replace the ``multimodel`` section of docs/benchmarks.md, with three charts,
docs/benchmarks/multimodel-{cold,warm,memory}.png (``bench.report.chart``).

How: everything lives in a temporary folder (the models, an isolated
MLX_LAMA_HOME and Hugging Face home per start, the manifest and the registry
file). The two sides never run at the same time; they alternate start by
start (the order reversed every start), and the models' cold order is rotated,
so each model is the first to load once. ``runs`` sets the warm requests per
model and the round-robin rounds; the starts per side are at most
:data:`STARTS`, since each start loads every model cold.

What it must not do: change mlx-lama or vllm-mlx, tune either, send traffic
anywhere but 127.0.0.1, or leave a process behind: the gateway and the peer
are stopped (SIGTERM, then SIGKILL of their groups), the model servers by the
PIDs in their run records (after checking their start time), the script checks
with psutil that none survives, and it removes its folder.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import httpx
import psutil
from tests.fixtures.servers import free_port
from tests.fixtures.tiny_model import make_tiny_model

from bench.gateway import (
    Stream,
    Target,
    isolated_env,
    one_stream,
    report_problems,
    sse_content,
    start_gateway,
    stop_process,
    survivors,
    tail,
    tear_down,
)
from bench.report import (
    Comparison,
    Measurement,
    chart,
    comparison_table,
    engine_version,
    machine,
    versions,
    write_section,
)
from mlx_lama.backends.base import get_backend

MODELS = ("tiny-a", "tiny-b", "tiny-c")
STARTS = 3  # fresh starts of each side at most: each start loads every model cold
WARMUP = 1  # discarded requests per model between the cold one and the warm ones
MAX_TOKENS = 16
PROMPT = [{"role": "user", "content": "hello"}]
MEMORY_BUDGET_GB = 4
KEEP_ALIVE_S = 600  # longer than the run: neither side unloads a model meanwhile
LISTEN_TIMEOUT = 120.0  # s from launch to answering /health
REQUEST_TIMEOUT = 180.0  # s; a cold request waits for a model server to start
STOP_GRACE = 60.0  # s; the gateway stops its model servers before it exits

OURS = "mlx-lama serve (on-demand, vllm-mlx)"
PEER = "vllm-mlx serve --models-config"
OURS_SHORT = "mlx-lama serve"
PEER_SHORT = "vllm-mlx --models-config"
SIDES = (OURS, PEER)
ORDINALS = ("1st", "2nd", "3rd")
MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclass(frozen=True, slots=True)
class Memory:
    rss: int  # bytes, summed over the processes
    uss: int  # bytes only these processes hold (shared libraries counted in neither)
    processes: int


@dataclass(frozen=True, slots=True)
class Start:
    """Everything measured in one fresh start of one side."""

    listening: float  # s from launch until /health answered 200
    cold: tuple[Stream, ...]  # by load position: first the one that found nothing loaded
    warm: tuple[Stream, ...]
    rounds: tuple[Stream, ...]  # round-robin: every request to another model
    idle: Memory  # answering, nothing loaded
    loaded: Memory  # all models loaded


# -- the two sides


def write_manifest(path: Path, models: Mapping[str, Path]) -> None:
    lines = [
        "version = 1",
        "",
        "[server]",
        "max_loaded = 3",
        f'memory_budget = "{MEMORY_BUDGET_GB}GB"',
        f"keep_alive = {KEEP_ALIVE_S}",
        "",
    ]
    for name, folder in models.items():
        lines += [
            f'[models."{name}"]',
            f"path = {json.dumps(str(folder))}",
            'serve = "on-demand"',
            'backend = "vllm-mlx"',
            "",
        ]
    path.write_text("\n".join(lines), encoding="utf-8")


def write_registry(path: Path, models: Mapping[str, Path]) -> None:
    """vllm-mlx's models-config YAML (``vllm_mlx.model_registry.load_registry_config``);
    JSON strings are YAML strings."""
    lines = [
        "manager:",
        f"  memory_budget_gb: {MEMORY_BUDGET_GB}",
        f"  idle_unload_seconds: {KEEP_ALIVE_S}",
        "models:",
    ]
    for name, folder in models.items():
        lines += [f"  - name: {json.dumps(name)}", f"    path: {json.dumps(str(folder))}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def start_peer(
    registry: Path, env: Mapping[str, str], log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``vllm-mlx serve --models-config`` on a free port of 127.0.0.1 in its own
    session, offline as mlx-lama starts it; return it and its URL."""
    port = free_port()
    python = get_backend("vllm-mlx").environment_python() or sys.executable
    argv = [
        python, "-m", "vllm_mlx.cli", "serve", "--models-config", str(registry),
        "--host", "127.0.0.1", "--port", str(port), "--offline",
    ]  # fmt: skip
    with log.open("wb") as out:
        peer = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
        )
    return peer, f"http://127.0.0.1:{port}"


def wait_listening(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Poll ``/health`` until it answers 200 (no model needs to be loaded)."""
    deadline = time.monotonic() + LISTEN_TIMEOUT
    with httpx.Client(trust_env=False, timeout=2.0) as client:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{proc.args!r} exited with {proc.returncode}:\n{tail(log)}")
            with suppress(httpx.HTTPError):
                if client.get(url + "/health").status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise SystemExit(f"not listening after {LISTEN_TIMEOUT:.0f}s:\n{tail(log)}")
            time.sleep(0.05)


def server_pids(url: str) -> list[int]:
    """The model servers the gateway's ``/health`` names."""
    with httpx.Client(trust_env=False, timeout=5.0) as client:
        models = client.get(url + "/health").json()["models"]
    return [int(entry["pid"]) for entry in models.values() if "pid" in entry]


def memory(pids: Sequence[int]) -> Memory:
    """RSS and USS of ``pids`` and all their descendants, each process counted once."""
    procs: dict[int, psutil.Process] = {}
    for pid in pids:
        with suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            procs[pid] = proc
            for child in proc.children(recursive=True):
                procs[child.pid] = child
    rss = uss = 0
    for proc in procs.values():
        with suppress(psutil.NoSuchProcess):
            info = proc.memory_full_info()
            rss += info.rss
            uss += info.uss
    return Memory(rss, uss, len(procs))


# -- the requests


def target(url: str, model: str) -> Target:
    body = {
        "model": model,
        "messages": PROMPT,
        "max_tokens": MAX_TOKENS,
        "stream": True,
        "temperature": 0,
    }
    return Target(url + "/v1/chat/completions", body, sse_content)


async def exercise(
    url: str, order: Sequence[str], runs: int, loaded: Callable[[], Memory]
) -> tuple[tuple[Stream, ...], tuple[Stream, ...], tuple[Stream, ...], Memory]:
    """Cold, warm and round-robin requests to a side that has loaded nothing yet, then
    its memory with every model loaded."""
    timeout = httpx.Timeout(REQUEST_TIMEOUT)
    async with httpx.AsyncClient(trust_env=False, timeout=timeout) as client:
        cold = [await one_stream(client, target(url, m)) for m in order]
        for m in order:
            for _ in range(WARMUP):
                await one_stream(client, target(url, m))
        warm = [await one_stream(client, target(url, m)) for m in order for _ in range(runs)]
        # The last warm request went to order[-1], so every request here switches model.
        rounds = [await one_stream(client, target(url, m)) for _ in range(runs) for m in order]
    return tuple(cold), tuple(warm), tuple(rounds), loaded()


def run_ours(root: Path, models: Mapping[str, Path], order: Sequence[str], runs: int) -> Start:
    """One fresh ``mlx-lama serve``: its own state folder, removed when it stops."""
    env = isolated_env(root)
    home = Path(env["MLX_LAMA_HOME"])
    manifest = root / "mlxlama.toml"
    write_manifest(manifest, models)
    log = root / "gateway.log"
    gateway: subprocess.Popen[bytes] | None = None
    watched: list[int] = []
    try:
        launched = time.perf_counter()
        gateway, url = start_gateway(manifest, env, log)
        watched.append(gateway.pid)
        wait_listening(url, gateway, log)
        listening = time.perf_counter() - launched
        gateway_pid = gateway.pid
        idle = memory([gateway_pid])

        def loaded() -> Memory:
            pids = server_pids(url)
            watched.extend(pids)
            if len(pids) != len(models):
                raise SystemExit(f"/health names {len(pids)} servers, not {len(models)}")
            return memory([gateway_pid, *pids])

        cold, warm, rounds, full = asyncio.run(exercise(url, order, runs, loaded))
        report_problems(log)
        for name in models:
            report_problems(home / "logs" / f"{name}.log")
        return Start(listening, cold, warm, rounds, idle, full)
    except BaseException:
        for path in (log, *(home / "logs" / f"{name}.log" for name in models)):
            print(f"--- last lines of {path} ---\n{tail(path)}", file=sys.stderr)
        raise
    finally:
        tear_down(gateway, home, root, watched)


def run_peer(root: Path, models: Mapping[str, Path], order: Sequence[str], runs: int) -> Start:
    """One fresh ``vllm-mlx serve --models-config`` in its own state folder."""
    env = isolated_env(root)
    registry = root / "models.yaml"
    write_registry(registry, models)
    log = root / "peer.log"
    peer: subprocess.Popen[bytes] | None = None
    try:
        launched = time.perf_counter()
        peer, url = start_peer(registry, env, log)
        wait_listening(url, peer, log)
        listening = time.perf_counter() - launched
        idle = memory([peer.pid])
        pid = peer.pid
        cold, warm, rounds, full = asyncio.run(exercise(url, order, runs, lambda: memory([pid])))
        report_problems(log)
        return Start(listening, cold, warm, rounds, idle, full)
    except BaseException:
        print(f"--- last lines of {log} ---\n{tail(log)}", file=sys.stderr)
        raise
    finally:
        left: list[int] = []
        if peer is not None:
            children = []
            with suppress(psutil.NoSuchProcess):
                children = [c.pid for c in psutil.Process(peer.pid).children(recursive=True)]
            stop_process(peer, STOP_GRACE)
            left = survivors([peer.pid, *children])
        shutil.rmtree(root, ignore_errors=True)
        if left:
            raise SystemExit(f"processes left behind: {left}")


# -- the run


def main(runs: int = 15) -> None:
    """``runs`` warm requests per model and ``runs`` round-robin rounds in each of
    at most :data:`STARTS` fresh starts of each side."""
    starts = max(1, min(runs, STARTS))
    root = Path(tempfile.mkdtemp(prefix="mlx-lama-bench-multimodel-"))
    results: dict[str, list[Start]] = {side: [] for side in SIDES}
    began = time.monotonic()
    try:
        models = {name: make_tiny_model(root / name, seed=i) for i, name in enumerate(MODELS)}
        for index in range(starts):
            order = MODELS[index:] + MODELS[:index]
            sides = SIDES if index % 2 == 0 else tuple(reversed(SIDES))
            for side in sides:
                folder = root / f"{'ours' if side == OURS else 'peer'}-{index}"
                run = run_ours if side == OURS else run_peer
                start = run(folder, models, order, runs)
                results[side].append(start)
                print(
                    f"start {index + 1}/{starts} {side:38s} listening {start.listening:5.2f} s  "
                    f"cold {' '.join(f'{s.ttft:.2f}' for s in start.cold)} s  "
                    f"warm TTFT {median_ms(start.warm):.1f} ms  "
                    f"rss {start.loaded.rss / MiB:.0f} MiB",
                    flush=True,
                )
        write_section("multimodel", render(results, runs))
        print(f"done in {time.monotonic() - began:.0f}s", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- the report


def median_ms(streams: Sequence[Stream]) -> float:
    return statistics.median(s.ttft for s in streams) * 1000


@dataclass(frozen=True, slots=True)
class Figure:
    """One measure of both sides: what, a short name for the chart, and the samples."""

    what: str
    short: str
    unit: str  # "s", "ms" or "GiB"
    ours: tuple[float, ...]
    peer: tuple[float, ...]

    def comparison(self, *, charted: bool = False) -> Comparison:
        """For the table the sides are named; a chart's bars need labels of their own."""
        ours = f"{self.short}, mlx-lama" if charted else OURS_SHORT
        peer = f"{self.short}, vllm-mlx" if charted else PEER_SHORT
        return Comparison(
            self.what,
            Measurement(ours, self.ours, unit=self.unit),
            Measurement(peer, self.peer, unit=self.unit),
        )


def figures(results: Mapping[str, Sequence[Start]]) -> dict[str, list[Figure]]:
    """The figures by chart: start-up and cold loads (s), warm requests (ms), memory (GiB)."""

    def both(what: str, short: str, unit: str, pick: Callable[[Start], Sequence[float]]) -> Figure:
        ours = tuple(v for s in results[OURS] for v in pick(s))
        peer = tuple(v for s in results[PEER] for v in pick(s))
        return Figure(what, short, unit, ours, peer)

    def cold(position: int) -> Figure:
        already = "nothing loaded" if position == 0 else f"{position} loaded"
        what = f"cold request, {ORDINALS[position]} model ({already}): TTFT"
        return both(what, f"cold {ORDINALS[position]}", "s", lambda s: [s.cold[position].ttft])

    return {
        "cold": [
            both("launch until `/health` answers", "listening", "s", lambda s: [s.listening]),
            *(cold(position) for position in range(len(MODELS))),
            both(
                "launch to the first token (listening + 1st cold TTFT)",
                "first token",
                "s",
                lambda s: [s.listening + s.cold[0].ttft],
            ),
        ],
        "warm": [
            both(
                "warm request (same model again): TTFT",
                "warm TTFT",
                "ms",
                lambda s: [x.ttft * 1000 for x in s.warm],
            ),
            both(
                "warm request: to the last token",
                "warm, last token",
                "ms",
                lambda s: [(x.ttft + x.span) * 1000 for x in s.warm],
            ),
            both(
                "round-robin request (another model each time): TTFT",
                "round-robin TTFT",
                "ms",
                lambda s: [x.ttft * 1000 for x in s.rounds],
            ),
        ],
        "memory": [
            both(
                "RSS, all processes, nothing loaded",
                "RSS idle",
                "GiB",
                lambda s: [s.idle.rss / GiB],
            ),
            both(
                "RSS, all processes, 3 models loaded",
                "RSS loaded",
                "GiB",
                lambda s: [s.loaded.rss / GiB],
            ),
            both(
                "USS, all processes, nothing loaded",
                "USS idle",
                "GiB",
                lambda s: [s.idle.uss / GiB],
            ),
            both(
                "USS, all processes, 3 models loaded",
                "USS loaded",
                "GiB",
                lambda s: [s.loaded.uss / GiB],
            ),
        ],
    }


CHART_TITLES = {
    "cold": "Several models: start-up and cold loads (s)",
    "warm": "Several models: warm requests, all loaded (ms)",
    "memory": "Several models: memory of all processes (GiB)",
}


def render(results: Mapping[str, Sequence[Start]], runs: int) -> str:
    by_chart = figures(results)
    every = [f for group in by_chart.values() for f in group]
    table = comparison_table([f.comparison() for f in every])
    charts = "\n\n".join(
        chart(
            f"multimodel-{name}",
            [f.comparison(charted=True) for f in group],
            title=CHART_TITLES[name],
        )
        for name, group in by_chart.items()
    )
    return f"""## Several models on demand: the gateway vs `vllm-mlx --models-config`

{wrap(setup(results, runs))}

{table}
{wrap(reading(results))}

{charts}

Versions: {versions("mlx-lama", "vllm-mlx", "mlx-lm", "mlx")}.
Machine: {machine()}.
Command: `uv run --all-extras python -m bench multimodel --runs {runs}`
"""


def setup(results: Mapping[str, Sequence[Start]], runs: int) -> str:
    starts = len(results[OURS])
    servers = results[OURS][-1].loaded.processes - 1
    tokens = sorted({x.tokens for side in results.values() for s in side for x in s.warm})
    return f"""Three tiny random-weight test models (2 layers, hidden size 64, different
seeds), served two ways on the same engine, vllm-mlx {engine_version("vllm-mlx")} (its
default single-request engine; MLX {version("mlx")}, CPU). Ours (`{OURS_SHORT}`):
`mlx-lama serve` with the three as `serve = "on-demand"`, `backend =
"vllm-mlx"`: one `vllm-mlx serve` process per model, started on the model's
first request, behind the gateway. The peer (`{PEER_SHORT}`): one `vllm-mlx
serve --models-config models.yaml --host 127.0.0.1 --port PORT --offline`
process (the three under `models:` by `name` and `path`) that loads each model
into itself on its first request; mlx-lama starts its servers offline too.
Neither unloads a model during the run (`max_loaded = 3`, budgets of
{MEMORY_BUDGET_GB} GB, keep-alive and idle unload {KEEP_ALIVE_S} s). Each side was started fresh
{starts} times, alone on the machine (the sides alternate, the order reversed
every start); each start got one cold request per model (the cold order
rotated, so each model loads first once), {WARMUP} discarded request per model,
{runs} warm requests per model, and {runs} round-robin rounds over the three
models. Requests are streamed chat completions of `max_tokens = {MAX_TOKENS}`
(content events: {", ".join(map(str, tokens))}) at temperature 0 from one httpx
client, one at a time, to `/v1/chat/completions`; TTFT runs from sending a
request to the first event with content. Memory is summed over all of a side's
processes and their children (ours: the gateway and its {servers} model servers; the
peer: one process) with psutil, once the side answers `/health` and again
after the round-robin."""


def reading(results: Mapping[str, Sequence[Start]]) -> str:
    """How to read the table, with the figures that carry the argument, from the data."""
    ours, peer = results[OURS], results[PEER]
    later_ours = statistics.median(c.ttft for s in ours for c in s.cold[1:])
    later_peer = statistics.median(c.ttft for s in peer for c in s.cold[1:])
    peer_first = statistics.median(s.listening + s.cold[0].ttft for s in peer)
    models = len(MODELS)
    uss_ours = statistics.median((s.loaded.uss - s.idle.uss) / models for s in ours) / MiB
    uss_peer = statistics.median((s.loaded.uss - s.idle.uss) / models for s in peer) / MiB
    switch_ours, switch_peer = switching(results, OURS), switching(results, PEER)
    return f"""How to read it: each cell is the median over the samples with the min
and max (runs: samples per side); the ratio is ours over the peer's median, so
above 1 means mlx-lama took longer or more memory. The cold rows are where the
architectures differ, not the engine: a cold model costs ours a new process
(Python and vllm-mlx imports, the model load, and mlx-lama's readiness check, a
one-token generation; mlx-lama starts engines without PyTorch, which the peer's
process imports through transformers), against {peer_first:.1f} s from launch to
the first token for the peer, while the peer, once its first model has paid for
the lazy imports, only loads weights (a 2nd or 3rd cold model: median
{later_peer * 1000:.0f} ms for the peer, {later_ours:.1f} s for ours). These models weigh
almost nothing; with real ones the load of the weights, the same on both
sides, adds to both and the ratio moves towards 1, but ours keeps paying a few
seconds of process start per cold model. The warm and round-robin rows are
bounded by the engine, the same on both sides: what is left of the ratio there
is the gateway's relay hop (see the gateway section for its cost per token).
Switching, round-robin TTFT median minus warm TTFT median, costs
{switch_ours:+.1f} ms for ours and {switch_peer:+.1f} ms for the peer: neither
unloads anything here, so switching loads nothing on either side. Memory:
every model of ours brings a whole server (its own interpreter, vllm-mlx and
MLX), about {uss_ours:.0f} MiB of USS per model against {uss_peer:.0f} MiB for the
peer (the weights, and the lazy imports of the first); the peer's idle process
already holds the engine, ours only the gateway. RSS counts shared library
pages in every process, USS only what a process holds alone."""


def switching(results: Mapping[str, Sequence[Start]], side: str) -> float:
    """Round-robin TTFT median minus warm TTFT median, in ms."""
    starts = results[side]
    rounds = [x for s in starts for x in s.rounds]
    warm = [x for s in starts for x in s.warm]
    return median_ms(rounds) - median_ms(warm)


def wrap(paragraph: str) -> str:
    return textwrap.fill(" ".join(paragraph.split()), width=78, break_on_hyphens=False)
