"""``mlx-lama top``: a live dashboard of the running daemon and its model servers.

Polls the daemon's ``GET /mlx-lama/stats`` (``gateway/stats.py``) and redraws
one screen with rich: the gateway line, the machine, a row per server, the
latest requests and the tail of the selected server's log (read from its log
file: the daemon is on this machine). Keys act through the daemon or the
manifest, exactly as the verbs do: ``s`` stops (``stop``'s rule), ``r``
restarts (``POST /mlx-lama/restart``), ``b`` switches the backend (an edit of
the manifest; the daemon's hot reload restarts that server). Actions run on a
worker thread, so the screen keeps updating while a server stops or starts.

Rendering is a pure function of the stats (``_top_screen.render``), tested
without a terminal; the loop here only reads keys, fetches and redraws.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mlx_lama.cli._app import app
from mlx_lama.cli._common import handles_errors
from mlx_lama.cli._top_screen import View, render
from mlx_lama.errors import MlxLamaError

if TYPE_CHECKING:
    from mlx_lama.cli.daemonclient import Daemon
    from mlx_lama.schema.manifest import Manifest

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
        can = found.capabilities()
        serves = can.embeddings if embedding else can.chat
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
