"""Talking to the running daemon from another command.

A verb that edited the manifest hands the rest to the daemon when one serves
that same file: the daemon sees the save and reconciles, and the verb waits
for the result here (:meth:`Daemon.wait_applied`, :meth:`Daemon.wait_model`).
``run`` sends its requests to the daemon's Ollama API to use a warm model.

Only a daemon named by ``daemon.json`` (:func:`running_daemon`) and serving
the same manifest counts; requests carry ``[server] api_key`` when the
manifest sets one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from mlx_lama.daemonfile import running_daemon
from mlx_lama.errors import MlxLamaError
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

    def client(self, timeout: float | None = 10.0) -> httpx.Client:
        """An HTTP client for the daemon (no proxies from the environment)."""
        return httpx.Client(
            base_url=self.url, headers=dict(self.headers), timeout=timeout, trust_env=False
        )

    def health(self) -> dict[str, Any]:
        """The daemon's ``/health``. Raises DaemonError when it does not answer."""
        try:
            with self.client(timeout=5.0) as client:
                body = client.get("/health").json()
        except (httpx.HTTPError, ValueError) as error:
            raise DaemonError(
                f"the mlx-lama daemon at {self.url} (pid {self.pid}) did not answer: {error}",
                hint="check its log, or stop it and run the command again",
            ) from None
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
