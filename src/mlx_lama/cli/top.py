"""``mlx-lama top``: a live dashboard of the running daemon and its model servers.

Polls the daemon's ``GET /mlx-lama/stats`` (``gateway/stats.py``) and redraws
one screen with rich: the gateway line, the machine, a row per server, the
latest requests and the tail of the selected server's log (read from its log
file: the daemon is on this machine). Keys act through the daemon or the
manifest, exactly as the verbs do: ``s`` stops (``stop``'s rule), ``r``
restarts (``POST /mlx-lama/restart``), ``b`` switches the backend (an edit of
the manifest; the daemon's hot reload restarts that server). Actions run on a
worker thread, so the screen keeps updating while a server stops or starts.

Rendering is a pure function of the stats (:func:`render`), tested without a
terminal; the loop only reads keys, fetches and redraws.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mlx_lama.cli._app import app
from mlx_lama.cli._common import handles_errors
from mlx_lama.errors import MlxLamaError

if TYPE_CHECKING:
    from rich.console import RenderableType

    from mlx_lama.cli.daemonclient import Daemon
    from mlx_lama.schema.manifest import Manifest

KEYS = "↑/↓ select  l log  r restart  s stop  b backend  q quit"
LOG_KEYS = "l/Esc back  q quit"
UP, DOWN, ESCAPE = "up", "down", "escape"


class NoDaemonError(MlxLamaError):
    """``top`` needs a running daemon."""


@app.command()
@handles_errors
def top(
    interval: Annotated[
        float, typer.Option("--interval", help="Seconds between refreshes.", min=0.2)
    ] = 1.0,
) -> None:
    """Watch the running daemon live: its model servers, requests, and logs.

    One row per server (state, port, memory and, where the terminal is wide enough,
    the estimate the memory budget counts, tokens/s, time to first token,
    requests, keep_alive left), the latest requests and the selected server's
    log. Keys: up/down select, l full log, r restart, s stop, b switch backend,
    q quit. Without a terminal it prints one screen and exits.
    """
    daemon = connect()
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        from rich.console import Console

        Console(width=100).print(render(fetch(daemon), View()))
        return
    Dashboard(daemon, interval).run()


def connect() -> Daemon:
    """The running daemon (with the API key its manifest sets). Raises NoDaemonError."""
    from mlx_lama.cli.daemonclient import Daemon
    from mlx_lama.orchestrator.daemonfile import running_daemon
    from mlx_lama.schema import load_manifest

    info = running_daemon()
    if info is None:
        raise NoDaemonError("no mlx-lama daemon is running", hint="start one with `mlx-lama serve`")
    manifest = Path(str(info["manifest"]))
    key = None
    with contextlib.suppress(MlxLamaError, OSError):
        key = load_manifest(manifest).server.api_key
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return Daemon(url=str(info["url"]), manifest=manifest, pid=int(info["pid"]), headers=headers)


def fetch(daemon: Daemon) -> dict[str, Any]:
    """The daemon's stats. Raises MlxLamaError when it does not answer with them."""
    reply = daemon.request("GET", "/mlx-lama/stats", timeout=5.0)
    if reply.status != 200:
        raise MlxLamaError(reply.error_text())
    try:
        body = reply.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise MlxLamaError("the daemon's /mlx-lama/stats is not a JSON object")
    return body


# -- what the screen shows -----------------------------------------------------------------


@dataclass(slots=True)
class View:
    """What the user chose: the selected server, the full-log view, the last action's word."""

    selected: int = 0
    full_log: bool = False
    status: str = ""  # "stopping tiny…", or an action's result
    error: str = ""  # the daemon did not answer the last fetch
    width: int = 80
    height: int = 24
    log_lines: list[str] = field(default_factory=list)


def render(stats: Mapping[str, Any], view: View) -> RenderableType:
    """The whole screen for ``stats``. Pure: no I/O (log lines come in ``view``)."""
    from rich.console import Group
    from rich.text import Text

    servers: list[dict[str, Any]] = list(stats.get("servers") or [])
    header = _header(stats, view)
    footer = Text(view.status or (LOG_KEYS if view.full_log else KEYS), style="reverse")
    footer.truncate(view.width, overflow="ellipsis")
    if view.full_log:
        name = servers[view.selected]["name"] if servers else "-"
        room = max(1, view.height - 4)  # header (2), title, footer
        body = Text("\n".join(view.log_lines[-room:]) or "(the log is empty)", no_wrap=True)
        return Group(header, Text(f"log of {name}", style="bold"), body, footer)
    table = _servers(servers, view)
    recent_room = max(0, min(6, view.height - 9 - len(servers)))
    recent = _recent(list(stats.get("recent") or [])[:recent_room])
    log_room = max(0, view.height - 6 - len(servers) - recent_room - 1)
    parts: list[RenderableType] = [header, table]
    if recent_room:
        parts.append(recent)
    if servers and log_room > 1:
        name = servers[min(view.selected, len(servers) - 1)]["name"]
        tail = view.log_lines[-(log_room - 1) :]
        parts.append(Text(f"log of {name}", style="bold"))
        parts.append(
            Text("\n".join(tail) or "(no log lines yet)", no_wrap=True, overflow="ellipsis")
        )
    parts.append(footer)
    return Group(*parts)


def _header(stats: Mapping[str, Any], view: View) -> RenderableType:
    from rich.text import Text

    gateway = stats.get("gateway") or {}
    system = stats.get("system") or {}
    line = Text("mlx-lama top", style="bold")
    line.append(f"  {gateway.get('url', '?')}  up {_duration(gateway.get('uptime_seconds'))}")
    line.append(f"  {_number(gateway.get('requests_per_second'), '{:.1f}')} req/s")
    line.append(f"  {gateway.get('requests', 0)} requests")
    second = Text(
        f"CPU {_number(system.get('cpu_percent'), '{:.0f}')}% of {system.get('cpus', '?')}"
        f"  memory {_bytes(system.get('memory_used'))} / {_bytes(system.get('memory_total'))}"
    )
    if view.error:
        second.append(f"  {view.error}", style="bold red")
    for text in (line, second):
        text.truncate(view.width, overflow="ellipsis")
    from rich.console import Group

    return Group(line, second)


STATE_WORDS = {"not downloaded": "missing", "restarting": "restart"}  # 8 columns at most
# Title and width of every column after NAME: 57 columns and the 10 spaces between
# them leave 13 for the name in an 80-column terminal.
COLUMNS = (
    ("BACKEND", 8), ("STATE", 8), ("PORT", 5), ("MEM", 5), ("TOK/S", 5), ("TTFT ms", 7),
    ("REQS", 5), ("ERR", 3), ("TOKENS", 6), ("KEEP", 5),
)  # fmt: skip
# Where the terminal has room for it (the non-interactive screen has), EST follows MEM:
# what the memory budget counts the server as, beside what it holds.
ESTIMATE = ("EST", 5)
WIDE = 86


def columns(width: int) -> tuple[tuple[str, int], ...]:
    """The columns after NAME in a terminal ``width`` columns wide."""
    if width < WIDE:
        return COLUMNS
    at = [title for title, _ in COLUMNS].index("MEM") + 1
    return (*COLUMNS[:at], ESTIMATE, *COLUMNS[at:])


def _servers(servers: Sequence[Mapping[str, Any]], view: View) -> RenderableType:
    """One row per server; fits 80 columns (only a long name is cut short)."""
    from rich.table import Table

    shown = columns(view.width)
    table = Table(box=None, pad_edge=False, padding=(0, 1, 0, 0), header_style="bold")
    rest = sum(width + 1 for _, width in shown)
    name_width = max(
        6, min(24, view.width - rest, max((len(str(r.get("name"))) for r in servers), default=4))
    )
    table.add_column("NAME", no_wrap=True, overflow="ellipsis", width=name_width)
    for title, width in shown:
        table.add_column(
            title,
            justify="left" if title in ("BACKEND", "STATE") else "right",
            no_wrap=True,
            overflow="ellipsis",
            width=width,
        )
    for index, row in enumerate(servers):
        state = str(row.get("state", ""))
        keep = row.get("keep_alive_left")
        memory = [_bytes(row.get("memory_bytes"))]
        if ESTIMATE in shown:
            memory.append(_bytes(row.get("estimate_bytes")))
        table.add_row(
            str(row.get("name", "?")),
            str(row.get("backend", "")),
            STATE_WORDS.get(state, state),
            str(row.get("port") or "-"),
            *memory,
            _number(row.get("tokens_per_second"), "{:.0f}"),
            f"{_ms(row.get('ttft_p50'))}/{_ms(row.get('ttft_p95'))}",
            str(row.get("requests", 0)),
            str(row.get("errors", 0)),
            _count(int(row.get("prompt_tokens", 0)) + int(row.get("completion_tokens", 0))),
            _duration(keep) if keep is not None else "-",
            style="reverse" if index == view.selected else None,
        )
    if not servers:
        table.add_row("(no models)", *[""] * len(shown))
    return table


def _recent(requests: Sequence[Mapping[str, Any]]) -> RenderableType:
    from rich.table import Table

    table = Table(box=None, pad_edge=False, padding=(0, 1, 0, 0), header_style="bold")
    for title in ("TIME", "MODEL", "ENDPOINT", "STATUS", "TOKENS", "TOOK"):
        table.add_column(title, no_wrap=True, overflow="ellipsis")
    for entry in requests:
        at = entry.get("at")
        when = (
            datetime.fromtimestamp(at).strftime("%H:%M:%S") if isinstance(at, int | float) else "?"
        )
        tokens = int(entry.get("prompt_tokens", 0)) + int(entry.get("completion_tokens", 0))
        table.add_row(
            when,
            str(entry.get("model") or "-"),
            str(entry.get("endpoint", "")),
            str(entry.get("status", "")),
            str(tokens) if tokens else "-",
            _seconds(entry.get("seconds")),
        )
    return table


def _number(value: object, pattern: str) -> str:
    return pattern.format(value) if isinstance(value, int | float) else "-"


def _ms(value: object) -> str:
    return f"{value * 1000:.0f}" if isinstance(value, int | float) else "-"


def _seconds(value: object) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.1f}s"


def _duration(value: object) -> str:
    from mlx_lama.humanize import duration_str

    return duration_str(value) if isinstance(value, int | float) else "-"


def _bytes(value: object) -> str:
    """A size in 5 columns, in decimal units as ``ps`` and ``list`` print them: ``5.3G``."""
    if not isinstance(value, int | float) or value <= 0:
        return "-"
    size = float(value)
    for unit in ("B", "K", "M", "G"):
        if size < 1000:
            return f"{size:.0f}{unit}" if unit == "B" or size >= 10 else f"{size:.1f}{unit}"
        size /= 1000
    return f"{size:.1f}T"


def _count(value: int) -> str:
    if value < 10_000:
        return str(value)
    if value < 10_000_000:
        return f"{value / 1000:.0f}k"
    return f"{value / 1_000_000:.0f}M"


# -- the loop ------------------------------------------------------------------------------


class Dashboard:
    """Reads keys, fetches the stats every ``interval`` seconds, redraws."""

    def __init__(self, daemon: Daemon, interval: float) -> None:
        self.daemon = daemon
        self.interval = interval
        self.view = View()
        self.stats: dict[str, Any] = {}
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="top-action")
        self.action: Future[str] | None = None

    def run(self) -> None:
        from rich.console import Console
        from rich.live import Live

        console = Console()
        self._refresh()
        with _keys() as read_key, Live(
            render(self.stats, self.view),
            console=console,
            screen=True,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
        ) as live:  # fmt: skip
            next_fetch = time.monotonic() + self.interval
            while True:
                self.view.width, self.view.height = console.size
                live.update(render(self.stats, self.view), refresh=True)
                key = read_key(max(0.0, next_fetch - time.monotonic()))
                if key is not None and not self._on_key(key):
                    break
                if time.monotonic() >= next_fetch or key is not None:
                    self._refresh()
                    next_fetch = time.monotonic() + self.interval
        self.worker.shutdown(wait=False, cancel_futures=True)

    def _refresh(self) -> None:
        try:
            self.stats = fetch(self.daemon)
            self.view.error = ""
        except MlxLamaError as error:
            self.view.error = f"daemon: {error.message}"
        servers = self._servers()
        self.view.selected = min(self.view.selected, max(0, len(servers) - 1))
        self.view.log_lines = _log_tail(servers[self.view.selected] if servers else None)
        if self.action is not None and self.action.done():
            try:
                self.view.status = self.action.result()
            except MlxLamaError as error:
                self.view.status = f"failed: {error}"
            except Exception as error:  # an action must never take the dashboard down
                self.view.status = f"failed: {type(error).__name__}: {error}"
            self.action = None

    def _servers(self) -> list[dict[str, Any]]:
        return list(self.stats.get("servers") or [])

    def _on_key(self, key: str) -> bool:
        """Act on ``key``; False to quit."""
        if key == "q":
            return False
        servers = self._servers()
        if key in (UP, "k"):
            self.view.selected = max(0, self.view.selected - 1)
        elif key in (DOWN, "j"):
            self.view.selected = min(max(0, len(servers) - 1), self.view.selected + 1)
        elif key == "l":
            self.view.full_log = not self.view.full_log
        elif key == ESCAPE:
            self.view.full_log = False
        elif key in ("r", "s", "b") and servers:
            if self.action is not None:
                self.view.status = "busy with the last action; wait for it to finish"
                return True
            name = str(servers[self.view.selected]["name"])
            verb = {"r": "restarting", "s": "stopping", "b": "switching the backend of"}[key]
            self.view.status = f"{verb} {name}…"
            self.action = self.worker.submit(_ACTIONS[key], self.daemon, name)
        return True


def _log_tail(server: Mapping[str, Any] | None, lines: int = 200) -> list[str]:
    from mlx_lama.cli.logs import last_lines

    path = server.get("log") if server else None
    if not isinstance(path, str):
        return []
    try:
        with Path(path).open("rb") as handle:
            data = last_lines(handle, lines)
    except OSError:
        return []
    return [line.expandtabs() for line in data.decode("utf-8", errors="replace").splitlines()]


# -- actions (on the worker thread) -----------------------------------------------------------


def stop_server(daemon: Daemon, name: str) -> str:
    """Stop ``name`` as ``mlx-lama stop`` does (:func:`~mlx_lama.cli.stop.how_to_stop`),
    without waiting: the screen shows the server go."""
    from mlx_lama.cli.stop import how_to_stop, request_unload
    from mlx_lama.schema import editor, load_manifest

    if how_to_stop(load_manifest(daemon.manifest), name) == "serve never":
        editor.set_model_fields(daemon.manifest, name, {"serve": "never"})
        return f'{name} has serve = "never" in {daemon.manifest.name} now: stopping'
    request_unload(daemon, name)
    return f"unloaded {name}"


def restart_server(daemon: Daemon, name: str) -> str:
    reply = daemon.request("POST", "/mlx-lama/restart", {"model": name}, timeout=600.0)
    if reply.status != 200:
        raise MlxLamaError(reply.error_text())
    return f"restarted {name}"


def switch_backend(daemon: Daemon, name: str) -> str:
    """Give ``name`` the next backend that can serve it here (the manifest's named
    backends and the installed engines, in name order); hot reload restarts it."""
    from mlx_lama.schema import editor, load_manifest

    manifest = load_manifest(daemon.manifest)
    current = manifest.backend_of(name)
    choices = sorted({*backend_choices(manifest, name), current})
    if len(choices) < 2:
        raise MlxLamaError(f"no other backend can serve {name} here (only {current})")
    chosen = choices[(choices.index(current) + 1) % len(choices)]
    editor.set_model_fields(daemon.manifest, name, {"backend": chosen})
    return f"{name}: backend {current} -> {chosen} (the daemon restarts it)"


def backend_choices(manifest: Manifest, name: str) -> list[str]:
    """Backends local model ``name`` can use: the built-in engines installed here that
    serve its kind (text or embeddings), and the manifest's named configurations of them."""
    from mlx_lama.backends.base import backend_names, get_backend

    names = [*backend_names(), *manifest.backends]
    embedding = manifest.is_embedding(name)
    usable = []
    for backend in names:
        try:
            engine = manifest.backend_type(backend)
        except KeyError:
            continue
        if engine == "external":
            continue
        found = get_backend(engine)
        serves = found.capabilities().embeddings if embedding else found.capabilities().chat
        if serves and found.launchable():
            usable.append(backend)
    return sorted(set(usable))


_ACTIONS = {"s": stop_server, "r": restart_server, "b": switch_backend}


# -- the keyboard ------------------------------------------------------------------------------


@contextlib.contextmanager
def _keys() -> Iterator[Any]:
    """A function reading one key (None after ``timeout`` seconds), with the terminal
    in cbreak mode (no echo, no line buffering) until the block ends."""
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def read_key(timeout: float) -> str | None:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return None
        data = os.read(fd, 16).decode(errors="replace")
        if data.startswith("\x1b[A") or data.startswith("\x1bOA"):
            return UP
        if data.startswith("\x1b[B") or data.startswith("\x1bOB"):
            return DOWN
        if data == "\x1b":
            return ESCAPE
        return data[:1].lower() if data else None

    try:
        yield read_key
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
