"""Time from saving the manifest to the change being live in ``mlx-lama serve``.

What it measures: the daemon watches its manifest and reloads on every save.
This times, from just before the save's ``os.replace`` to the first answer that
shows the change:

- an alias added (``[aliases]``): until ``POST /api/show`` for it answers 200
  (404 before); target: live in under 0.5 s;
- an on-demand model added (``[models.m-N]``, ``serve`` left at its default):
  until ``/api/show`` for it answers 200 (routed; its server starts on its
  first request, which is not sent);
- a ``serve = "always"`` model added: until ``/health`` shows it "ready", which
  includes starting ``mlx_lm.server`` (the model is removed again after each
  run, and its server's PID is waited out before the next one);
- the floor: the same poll loop against an alias that already exists, that
  is one ``/api/show`` round trip, the part of every figure that is the
  gateway's request latency;
- the peer, what the same alias change costs without hot reload: stopping the
  daemon (SIGTERM) and starting it again on the changed manifest, until the
  new alias answers (the ``always`` server is adopted, not restarted).

How: everything lives in a temporary folder (the tiny random-weight test
model, an isolated MLX_LAMA_HOME and Hugging Face home, the manifest alone in
a folder of its own, so nothing else written there is part of a burst).
``mlx-lama serve -f`` runs as a subprocess; once its ``serve = "always"`` model
``a`` is ready, each run saves the manifest the way editors do (a temporary
file in the same folder, then ``os.replace`` over ``mlxlama.toml``) with one
new entry (saves are spaced by a random part of the watcher's 50 ms cycle, so
they land at random points of it), and one httpx client polls the gateway:
``/api/show`` every 2 ms, ``/health`` every 50 ms while a server starts (a
tighter loop would take CPU from the server being started). The daemon's log
line "reloaded mlxlama.toml in N ms" is read after each run for the reload's
own share, and every run is checked to cause exactly one reload that restarts
and stops nothing (but the removal of the always model, which must stop its
server); ``a``'s server must keep its PID throughout.

What it must not do: change the daemon, work around it, tune anything to meet
the target, or leave a process behind. The gateway is stopped (SIGTERM, then
SIGKILL of its group), servers by the PIDs in their run records (after
checking their start time), and the script checks with psutil that none
survives. The target is reported, never asserted; a change that never goes
live stops the run with the daemon's log.
"""

from __future__ import annotations

import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
from tests.fixtures.tiny_model import make_tiny_model

from bench.gateway import (
    isolated_env,
    report_problems,
    start_gateway,
    stop_process,
    survivors,
    tail,
    tear_down,
    wait_ready,
)
from bench.report import (
    Comparison,
    Measurement,
    chart,
    comparison_table,
    machine,
    versions,
    write_section,
)

MODEL = "a"  # the serve = "always" model every manifest has
FIXED_ALIAS = "fixed"  # an alias every manifest has: the floor polls it
ALWAYS_RUNS = 3  # runs of the always model at most (each starts a server)
SHOW_POLL = 0.002  # s between /api/show polls
HEALTH_POLL = 0.05  # s between /health polls while a server starts
LIVE_TIMEOUT = 10.0  # s a routing change may take before the run is stopped
START_TIMEOUT = 120.0  # s an always server may take to be ready
GONE_TIMEOUT = 60.0  # s a removed always server may take to exit
SETTLE = 0.3  # s after a change is live: the daemon logs, and the next save is a burst of its own
WARMUP_POLLS = 20  # /api/show requests before the floor is timed
ALIAS_TARGET = 0.5  # s
QUIET_MS = 50  # watchfiles' step in mlx_lama.orchestrator.watch
RELOADED = re.compile(r"reloaded mlxlama\.toml in (\d+) ms(.*)$")

FLOOR = "floor: one `/api/show` round trip (alias already live)"
ALIAS = "alias added: save to `/api/show` 200"
ON_DEMAND = "on-demand model added: save to `/api/show` 200 (routed)"
ALWAYS = 'always model added: save to `/health` "ready" (server started)'
RESTART = "daemon restarted instead: SIGTERM to the new daemon's `/api/show` 200"
RESTART_RUNS = 3  # each starts a daemon (seconds)


class Misbehaved(Exception):
    """The daemon did not do what a save asked of it."""


# -- the manifest, saved as editors save it


@dataclass(slots=True)
class Manifest:
    path: Path
    model: Path  # the tiny model's folder, every entry's path
    models: dict[str, str] = field(default_factory=dict)  # name -> serve (besides MODEL)
    aliases: dict[str, str] = field(default_factory=lambda: {FIXED_ALIAS: MODEL})

    def text(self) -> str:
        lines = ["version = 1", ""]
        for name, serve in {MODEL: "always", **self.models}.items():
            lines += [f'[models."{name}"]', f'path = "{self.model}"']
            if serve != "on-demand":
                lines.append(f'serve = "{serve}"')
            lines.append("")
        lines.append("[aliases]")
        lines += [f'"{alias}" = "{target}"' for alias, target in self.aliases.items()]
        return "\n".join(lines) + "\n"

    def save(self) -> float:
        """Write a temporary file beside the manifest, then ``os.replace`` it over the
        manifest; return ``time.perf_counter()`` from just before the replace."""
        fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".mlxlama.toml.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(self.text())
        start = time.perf_counter()
        Path(temp).replace(self.path)  # os.replace
        return start


# -- the daemon's log


class DaemonLog:
    """The gateway's log, read on from where the last look stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def new_lines(self) -> list[str]:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # complete lines only
        self.offset += end
        return data[:end].decode("utf-8", "replace").splitlines()


@dataclass(slots=True)
class Series:
    label: str
    seconds: list[float] = field(default_factory=list)
    reload_ms: list[int] = field(default_factory=list)  # from the daemon's log
    target: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


@dataclass(slots=True)
class Bench:
    url: str
    client: httpx.Client
    manifest: Manifest
    log: DaemonLog
    gateway: subprocess.Popen[bytes]
    watched: list[int]
    odd: list[str] = field(default_factory=list)  # what the daemon did that it should not
    jitter: random.Random = field(default_factory=lambda: random.Random(0))

    def show(self, name: str) -> int:
        return self.client.post(self.url + "/api/show", json={"model": name}).status_code

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = self.client.get(self.url + "/health").json()
        return body

    def until_shown(self, name: str, start: float) -> float:
        """Poll ``/api/show`` for ``name`` until it answers 200; seconds since ``start``."""
        while True:
            status = self.show(name)
            now = time.perf_counter()
            if status == 200:
                return now - start
            if status != 404:
                raise Misbehaved(f"/api/show {name!r} answered {status}")
            if now - start > LIVE_TIMEOUT:
                raise Misbehaved(f"{name!r} was not live {LIVE_TIMEOUT:.0f} s after the save")
            if self.gateway.poll() is not None:
                raise Misbehaved(f"the gateway exited with {self.gateway.returncode}")
            time.sleep(SHOW_POLL)

    def reloads(self, what: str, stopping: str = "") -> list[int]:
        """The reload times the daemon logged since the last look; note anything but one
        reload that restarts nothing and stops only ``stopping``."""
        lines = self.log.new_lines()
        found = [m for m in map(RELOADED.search, lines) if m]
        expected = f"; stopping: {stopping}" if stopping else ""
        if len(found) != 1 or found[0].group(2) != expected:
            shown = "\n".join(lines) or "<nothing logged>"
            self.odd.append(f"{what}: expected one reload{expected!r}, the daemon logged:\n{shown}")
        return [int(m.group(1)) for m in found]

    # -- the measurements

    def floor(self, runs: int) -> Series:
        series = Series(FLOOR)
        for _ in range(WARMUP_POLLS):
            self.show(FIXED_ALIAS)
        for _ in range(runs):
            series.seconds.append(self.until_shown(FIXED_ALIAS, time.perf_counter()))
            time.sleep(SHOW_POLL)
        return series

    def routing(self, label: str, runs: int, add: str) -> Series:
        """Save ``runs`` times, each time adding one alias (``add="alias"``) or one
        on-demand model (``add="model"``), and time each until it is shown."""
        series = Series(label, target=ALIAS_TARGET if add == "alias" else None)
        self.log.new_lines()
        for index in range(1, runs + 1):
            if add == "alias":
                name = f"alias-{index}"
                self.manifest.aliases[name] = MODEL
            else:
                name = f"m-{index}"
                self.manifest.models[name] = "on-demand"
            series.seconds.append(self.until_shown(name, self.manifest.save()))
            self.settle()
            series.reload_ms += self.reloads(f"adding {name}")
        return series

    def always(self, runs: int) -> Series:
        """Add an always model, time it until ready, remove it, wait for its server to
        exit; ``runs`` times."""
        series = Series(ALWAYS)
        self.log.new_lines()
        for index in range(1, runs + 1):
            name = f"s-{index}"
            self.manifest.models[name] = "always"
            elapsed, pid = self.until_ready(name, self.manifest.save())
            series.seconds.append(elapsed)
            self.watched.append(pid)
            series.reload_ms += self.reloads(f"adding {name}")
            del self.manifest.models[name]
            self.manifest.save()
            self.until_gone(name, pid)
            self.settle()
            self.reloads(f"removing {name}", stopping=name)
        return series

    def settle(self) -> None:
        """Wait before the next save: SETTLE, then a random part of the watcher's step.
        watchfiles looks for events every QUIET_MS from the end of the last burst, so
        without the random part every save would land at about the same point of that
        cycle and the runs would all wait about equally long for it."""
        time.sleep(SETTLE + self.jitter.uniform(0, QUIET_MS / 1000))

    def until_ready(self, name: str, start: float) -> tuple[float, int]:
        while True:
            entry = self.health()["models"].get(name)
            now = time.perf_counter()
            if entry is not None and entry["state"] == "ready":
                return now - start, int(entry["pid"])
            if entry is not None and entry["state"] == "failed":
                raise Misbehaved(f"{name!r} failed to start: {entry}")
            if now - start > START_TIMEOUT:
                raise Misbehaved(f"{name!r} not ready {START_TIMEOUT:.0f} s after the save")
            if self.gateway.poll() is not None:
                raise Misbehaved(f"the gateway exited with {self.gateway.returncode}")
            time.sleep(HEALTH_POLL)

    def until_gone(self, name: str, pid: int) -> None:
        deadline = time.monotonic() + GONE_TIMEOUT
        while survivors([pid]) or name in self.health()["models"]:
            if time.monotonic() > deadline:
                raise Misbehaved(
                    f"{name!r} (pid {pid}) still there {GONE_TIMEOUT:.0f} s after its removal"
                )
            time.sleep(HEALTH_POLL)


def main(runs: int = 15) -> None:
    """``runs`` timed saves per routing measurement, at most ALWAYS_RUNS for the always
    model."""
    root = Path(tempfile.mkdtemp(prefix="mlx-lama-bench-reload-"))
    gateway: subprocess.Popen[bytes] | None = None
    bench: Bench | None = None
    watched: list[int] = []
    home = root / "state" / "mlx-lama-home"
    log = root / "gateway.log"
    started = time.monotonic()
    try:
        env = isolated_env(root)
        manifest = Manifest(root / "project" / "mlxlama.toml", make_tiny_model(root / "model"))
        manifest.path.parent.mkdir()
        manifest.path.write_text(manifest.text(), encoding="utf-8")
        gateway, url = start_gateway(manifest.path, env, log)
        watched.append(gateway.pid)
        pid = wait_ready(url, gateway, log, model=MODEL)
        watched.append(pid)
        print(f"ready after {time.monotonic() - started:.1f}s", flush=True)
        with httpx.Client(trust_env=False, timeout=10.0) as client:
            bench = Bench(url, client, manifest, DaemonLog(log), gateway, watched)
            results = [
                bench.floor(runs),
                bench.routing(ALIAS, runs, "alias"),
                bench.routing(ON_DEMAND, runs, "model"),
                bench.always(min(runs, ALWAYS_RUNS)),
            ]
            for series in results:
                print(
                    f"{series.label:70s} median {series.median * 1000:8.1f} ms "
                    f"(min {min(series.seconds) * 1000:.1f}, max {max(series.seconds) * 1000:.1f})",
                    flush=True,
                )
            now = bench.health()["models"][MODEL]
            if now["state"] != "ready" or int(now["pid"]) != pid:
                bench.odd.append(f"{MODEL!r} did not keep its server (pid {pid}): now {now}")
            restart, gateway = restarted(bench, env, root, min(runs, RESTART_RUNS))
            results.append(restart)
            print(f"{restart.label:70s} median {restart.median * 1000:8.1f} ms", flush=True)
            now = bench.health()["models"][MODEL]
            if int(now["pid"]) != pid:
                bench.odd.append(f"the restarted daemon did not adopt {MODEL!r}: now {now}")
        for line in bench.odd:
            print(f"unexpected: {line}", file=sys.stderr)
        report_problems(log)
        write_section("reload", render(results, bench.odd))
        print(f"done in {time.monotonic() - started:.0f}s", flush=True)
    except BaseException:
        for path in (log, *sorted((home / "logs").glob("*.log"))):
            print(f"--- last lines of {path.name} ---\n{tail(path)}", file=sys.stderr)
        raise
    finally:
        tear_down(bench.gateway if bench is not None else gateway, home, root, watched)


def restarted(
    bench: Bench, env: dict[str, str], root: Path, runs: int
) -> tuple[Series, subprocess.Popen[bytes]]:
    """The peer: make each alias change live by restarting the daemon, ``runs`` times.
    Returns the times and the daemon left running (the caller stops it)."""
    series = Series(RESTART)
    gateway = bench.gateway
    for index in range(1, runs + 1):
        name = f"restart-{index}"
        start = time.perf_counter()
        stop_process(gateway, 60)
        bench.manifest.aliases[name] = MODEL
        bench.manifest.save()
        gateway, url = start_gateway(bench.manifest.path, env, root / f"gateway-{index}.log")
        bench.watched.append(gateway.pid)
        bench.gateway, bench.url = gateway, url
        while True:
            try:
                if bench.show(name) == 200:
                    break
            except httpx.TransportError:  # not listening yet
                pass
            if gateway.poll() is not None:
                raise Misbehaved(f"the restarted gateway exited with {gateway.returncode}")
            if time.perf_counter() - start > START_TIMEOUT:
                raise Misbehaved(f"{name!r} not live {START_TIMEOUT:.0f} s after the restart")
            time.sleep(SHOW_POLL)
        series.seconds.append(time.perf_counter() - start)
    return series, gateway


# -- the report


def duration(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def row(series: Series) -> str:
    target = verdict = "-"
    if series.target is not None:
        target = f"< {series.target:.1f} s"
        verdict = "met" if series.median < series.target else "not met"
    return (
        f"| {series.label} | {len(series.seconds)} | {duration(series.median)} "
        f"| {duration(min(series.seconds))} | {duration(max(series.seconds))} "
        f"| {target} | {verdict} |"
    )


def reload_share(series: Series) -> str:
    if not series.reload_ms:
        return "none logged"
    return (
        f"{statistics.median(series.reload_ms):.0f} ms median "
        f"({min(series.reload_ms)}-{max(series.reload_ms)} ms)"
    )


def render(results: list[Series], odd: list[str]) -> str:
    floor, alias, on_demand, always, restart = results
    rows = "\n".join(row(s) for s in results)
    comparisons = [
        Comparison(
            "an alias change live",
            Measurement("hot reload", tuple(alias.seconds)),
            Measurement("daemon restart", tuple(restart.seconds)),
        )
    ]
    rest = min(alias.seconds) - QUIET_MS / 1000
    setup = f"""`mlx-lama serve -f mlxlama.toml` with the tiny random-weight test model
(2 layers, hidden size 64) as `serve = "always"` model `{MODEL}`, served by
`mlx_lm.server` {version("mlx-lm")} (MLX {version("mlx")}, CPU); watchfiles
{version("watchfiles")}. Each run saves the manifest as editors do (a temporary file
in the same folder, then `os.replace` over `mlxlama.toml`) with one new entry:
an alias of `{MODEL}` (`alias-N`), an on-demand model (`m-N`, the same folder;
added entries stay), or a `serve = "always"` model (`s-N`, removed again after
its run, and its server waited out). The peer makes the same alias change
live the way a server without hot reload needs: the daemon is stopped
(SIGTERM), the manifest saved, and `mlx-lama serve` started again, until the
new alias answers ({RESTART_RUNS} runs; the `always` server is adopted, not
restarted). The time runs from just before the
`os.replace` to the first answer showing the change: `POST /api/show` polled
every {SHOW_POLL * 1000:.0f} ms (404 until live, then 200), or `/health` polled every
{HEALTH_POLL * 1000:.0f} ms until the model is "ready". The floor is the same poll
loop against an alias that is already live: one `/api/show` round trip.
Saves are {SETTLE * 1000:.0f}-{SETTLE * 1000 + QUIET_MS:.0f} ms apart (after the previous change was
live), the extra part random, so they land at random points of the watcher's
{QUIET_MS} ms cycle."""
    reading = f"""How to read it: a save's time includes the filesystem event (inotify
here), watchfiles gathering the burst (it looks for new events every
{QUIET_MS} ms and ends the burst at the first look that finds none, so a
save is noticed {QUIET_MS}-{2 * QUIET_MS} ms after it happened), the daemon hashing,
loading and validating the manifest and its lock, the reload itself (the
daemon logs its share: {reload_share(alias)} for the aliases,
{reload_share(on_demand)} for the on-demand models,
{reload_share(always)} for the always models), and up to one poll interval
plus a round trip (the floor, {duration(floor.median)}) until the client sees
it. So about {QUIET_MS * 1.5:.0f} ms of a median are the watcher's
({QUIET_MS}-{2 * QUIET_MS} ms, by where in its cycle the save lands), and the
fastest alias save took {duration(min(alias.seconds))}: everything else (event
delivery, loading, validating, the reload and one poll) took at most
{rest * 1000:.0f} ms there. An added on-demand model is routed as soon as the
reload is in; its server starts on its first request (not timed here). The
always model's time is dominated by
starting `mlx_lm.server` and loading the model, which the daemon begins
right after the reload. The client, the gateway and the servers share the
machine's cores."""
    problems = ""
    if odd:
        listed = "\n".join(f"- {textwrap.indent(line, '  ').lstrip()}" for line in odd)
        problems = f"\nUnexpected daemon behaviour seen in this run:\n\n{listed}\n"
    return f"""## Manifest save to live change (hot reload)

{wrap(setup)}

{comparison_table(comparisons)}
{chart("reload", comparisons, title="alias change live: hot reload vs daemon restart (s)")}

| measurement | runs | median | min | max | target | verdict |
|---|---|---|---|---|---|---|
{rows}

{wrap(reading)}
{problems}
Machine: {machine()}; {versions("mlx-lama", "mlx-lm", "watchfiles")}.
Command: `uv run --all-extras python -m bench reload`
"""


def wrap(paragraph: str) -> str:
    return textwrap.fill(" ".join(paragraph.split()), width=78, break_on_hyphens=False)
