"""Talking to the running daemon from another command.

A verb that edited the manifest hands the rest to the daemon when one serves
that same file: the daemon sees the save and reconciles, and the verb waits
for the result here (:meth:`Daemon.wait_applied`, :meth:`Daemon.wait_model`).
``run`` sends its requests to the daemon's Ollama API to use a warm model.

Only a daemon named by ``daemon.json`` (:func:`running_daemon`) and serving
the same manifest counts; requests carry ``[server] api_key`` when the
manifest sets one.

HTTP goes through the standard library's ``http.client``: the daemon is on
this machine and speaks plain HTTP/1.1, and importing and setting up httpx
(its CLI module, an SSL context) would take longer than ``run`` itself takes
to answer with a warm model.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mlx_lama.errors import MlxLamaError
from mlx_lama.orchestrator.daemonfile import running_daemon
from mlx_lama.orchestrator.watch import fingerprint

POLL_SECONDS = 0.05


class DaemonError(MlxLamaError):
    """The daemon did not do what was asked, or could not be reached."""


@dataclass(frozen=True, slots=True)
class Daemon:
    """The running ``mlx-lama serve`` for a manifest."""

    url: str
    manifest: Path
    pid: int
    headers: Mapping[str, str] = field(default_factory=dict)

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        timeout: float | None,
    ) -> Reply:
        """One request, its whole answer read. Raises DaemonError when the daemon
        cannot be reached or stops answering within ``timeout`` seconds (None: waits
        as long as it takes)."""
        with self.stream(method, path, body, timeout=timeout) as reply:
            return Reply(reply.status, reply.read())

    @contextlib.contextmanager
    def stream(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        timeout: float | None,
    ) -> Iterator[http.client.HTTPResponse]:
        """A request whose answer is read as it arrives (``readline`` for NDJSON);
        ``timeout`` applies to each read, None waits as long as it takes. The
        connection is closed on the way out. Transport errors, here or while the
        caller reads, become DaemonError."""
        address = urlsplit(self.url)
        connection = http.client.HTTPConnection(
            address.hostname or "127.0.0.1", address.port, timeout=timeout
        )
        headers = {"Accept": "application/json", **self.headers}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, path, body=payload, headers=headers)
            yield connection.getresponse()
        except (OSError, http.client.HTTPException) as error:
            raise DaemonError(
                f"the mlx-lama daemon at {self.url} (pid {self.pid}) did not answer: "
                f"{error or type(error).__name__}",
                hint="check that `mlx-lama serve` still runs, and its log",
            ) from None
        finally:
            connection.close()

    def health(self) -> dict[str, Any]:
        """The daemon's ``/health``. Raises DaemonError when it does not answer."""
        reply = self.request("GET", "/health", timeout=5.0)
        try:
            body = reply.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise DaemonError(f"the mlx-lama daemon at {self.url} sent an unexpected /health")
        return body

    def wait_applied(self, *, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until the daemon has reloaded the manifest as it is on disk now;
        return its ``/health`` then. Raises DaemonError when it refuses the file
        or does not get to it in ``timeout`` seconds."""
        wanted = fingerprint(self.manifest)[0]
        deadline = time.monotonic() + timeout
        while True:
            health = self.health()
            if health.get("manifest_sha256") == wanted:
                return health
            problem = health.get("manifest_error")
            if isinstance(problem, str) and fingerprint(self.manifest)[0] == wanted:
                raise DaemonError(f"the daemon refused {self.manifest.name}: {problem}")
            if time.monotonic() > deadline:
                raise DaemonError(
                    f"the mlx-lama daemon (pid {self.pid}) has not picked up the change to "
                    f"{self.manifest} after {timeout:.0f} s",
                    hint="the change is saved; check the daemon's log, or send it SIGHUP",
                )
            time.sleep(POLL_SECONDS)

    def apply(self, *, timeout: float = 120.0) -> dict[str, Any]:
        """Have the daemon reconcile the manifest on disk now (a failed server is tried
        again); its plan, as ``plan --json`` shows one. Raises DaemonError when it
        refuses the manifest or does not answer."""
        reply = self.request("POST", "/mlx-lama/apply", {}, timeout=timeout)
        if reply.status != 200:
            raise DaemonError(
                f"the daemon (pid {self.pid}) did not apply {self.manifest.name}: "
                f"{reply.error_text()}",
                hint="fix mlxlama.toml and save it: the daemon applies each valid save",
            )
        try:
            plan = reply.json()["plan"]
        except (ValueError, KeyError, TypeError):
            plan = None
        if not isinstance(plan, dict):
            raise DaemonError(f"the mlx-lama daemon at {self.url} sent an unexpected answer")
        return plan

    def wait_model(
        self,
        name: str,
        done: Callable[[dict[str, Any] | None], bool],
        *,
        timeout: float,
        what: str,
    ) -> dict[str, Any] | None:
        """Poll ``/health`` until ``done(model's entry, or None when it has none)``;
        a model that has ``failed`` raises DaemonError with its error and log tail."""
        deadline = time.monotonic() + timeout
        while True:
            models = self.health().get("models")
            entry = models.get(name) if isinstance(models, dict) else None
            if done(entry):
                return entry if isinstance(entry, dict) else None
            if isinstance(entry, dict) and entry.get("state") == "failed":
                tail = entry.get("log_tail") or ""
                detail = f"\n  last lines of its log:\n{_indent(tail)}" if tail.strip() else ""
                raise DaemonError(
                    f"{name} failed to {what}: {entry.get('error', 'see the daemon log')}{detail}",
                    hint="fix mlxlama.toml and save it: the daemon tries again",
                )
            if time.monotonic() > deadline:
                state = entry.get("state") if isinstance(entry, dict) else "not known"
                raise DaemonError(
                    f"{name} did not {what} within {timeout:.0f} s (state: {state})",
                    hint="`mlx-lama ps` shows what the daemon is doing",
                )
            time.sleep(POLL_SECONDS)


@dataclass(frozen=True, slots=True)
class Reply:
    """A whole answer of the daemon."""

    status: int
    body: bytes

    def json(self) -> Any:
        """The body as JSON (raises ValueError when it is not)."""
        return json.loads(self.body)

    def error_text(self) -> str:
        """What a failed request says: its ``{"error": ...}``, else the status and text."""
        try:
            body = self.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            return str(body["error"])
        text = self.body.decode(errors="replace").strip()[:200]
        return f"the daemon answered HTTP {self.status}" + (f": {text}" if text else "")


def daemon_for(manifest_path: Path, api_key: str | None = None) -> Daemon | None:
    """The running daemon if it serves ``manifest_path`` (the same file), else None."""
    info = running_daemon()
    if info is None:
        return None
    try:
        served = Path(str(info["manifest"]))
        same = served.resolve() == manifest_path.resolve()
        url, pid = str(info["url"]), int(info["pid"])
    except (KeyError, TypeError, ValueError, OSError):
        return None
    if not same:
        return None
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return Daemon(url=url, manifest=served, pid=pid, headers=headers)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.rstrip().splitlines())
