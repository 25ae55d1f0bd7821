"""Is a server that was just started ready: one one-token generation (or embedding) answered.

:func:`wait_ready` polls with :func:`one_token` on a daemon thread while it
watches the process (an exit before it is ready) and its log (a fatal error
the engine printed while loading), so a broken start is reported at once
rather than at the timeout. The watchdog's probe asks :func:`one_token` too.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import httpx

from mlx_lama.backends.base import LaunchSpec

_POLL = 0.1
_RETRY_PAUSE = 0.25
_SETTLE = 0.3


class _Probe:
    """One readiness request on a daemon thread, so the wait loop can watch the process.

    A daemon thread because the request may hang (a broken mlx-lm never
    answers) and must not keep the interpreter alive on Ctrl-C.
    """

    def __init__(self, launch: LaunchSpec, timeout: float) -> None:
        self.problem: str | None = "no answer yet"
        self.done = threading.Event()
        threading.Thread(
            target=self._run, args=(launch, timeout), daemon=True, name="mlx-lama-ready-probe"
        ).start()

    def _run(self, launch: LaunchSpec, timeout: float) -> None:
        try:
            self.problem = one_token(launch, timeout)
        except Exception as exc:  # a thread must not die noisily; the loop reports it
            self.problem = f"probe failed: {exc!r}"
        finally:
            self.done.set()


def one_token(launch: LaunchSpec, timeout: float) -> str | None:
    """Ask the server for a one-token chat completion (the embedding of one word, for
    an engine that only embeds); None when it answered, else why not."""
    path, body, field, what = _QUESTIONS[launch.answers]
    if launch.served_model is not None:
        body = {**body, "model": launch.served_model}
    limits = httpx.Timeout(timeout, connect=min(2.0, timeout))
    try:
        with httpx.Client(trust_env=False, timeout=limits) as client:
            reply = client.post(f"{launch.base_url}{path}", json=body)
    except httpx.HTTPError as exc:
        return f"no answer ({type(exc).__name__})"
    if reply.status_code != 200:
        return f"HTTP {reply.status_code}: {reply.text[:200]}"
    try:
        items = reply.json()[field]
    except (ValueError, KeyError, TypeError):
        return f"not {what}: {reply.text[:200]}"
    return None if items else f"{what} without {field}"


# What each kind of engine is asked: (path, body, the list its answer must have, its name).
_QUESTIONS: dict[str, tuple[str, dict[str, object], str, str]] = {
    "chat": (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 1, "stream": False},
        "choices",
        "a chat completion",
    ),
    "embedding": ("/v1/embeddings", {"input": "hello"}, "data", "an embedding list"),
}


class _LogWatch:
    """Finds fatal markers in what a server appends to its log, reading each byte once."""

    def __init__(self, path: Path, start: int, markers: tuple[str, ...]) -> None:
        self.path = path
        self.pos = start
        self.markers = markers
        self.carry = ""

    def fatal(self) -> str | None:
        if not self.markers:
            return None
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.pos)
                data = handle.read()
        except OSError:
            return None
        self.pos += len(data)
        text = self.carry + data.decode("utf-8", errors="replace")
        self.carry = text[-max(len(m) for m in self.markers) :]
        return next((m for m in self.markers if m in text), None)


def wait_ready(
    launch: LaunchSpec,
    proc: subprocess.Popen[bytes],
    log_path: Path,
    log_start: int,
    timeout: float,
) -> str | None:
    """Poll until a one-token generation succeeds; None when ready, else what went wrong."""
    deadline = time.monotonic() + timeout
    watch = _LogWatch(log_path, log_start, launch.fatal_log_markers)
    probe: _Probe | None = None
    next_try = 0.0
    last = "no answer yet"
    while True:
        code = proc.poll()
        if code is not None:
            return f"it exited with code {code} before it was ready"
        marker = watch.fatal()
        if marker is not None:
            time.sleep(_SETTLE)  # let it finish writing the traceback we will quote
            return f"it logged a fatal error ({marker!r}) while loading"
        if probe is not None and probe.done.is_set():
            if probe.problem is None:
                return None
            last, probe = probe.problem, None
            next_try = time.monotonic() + _RETRY_PAUSE
        now = time.monotonic()
        if now >= deadline:
            return f"not ready after {timeout:g}s (last probe: {last})"
        if probe is None and now >= next_try:
            probe = _Probe(launch, deadline - now)
        if probe is not None:
            probe.done.wait(_POLL)
        else:
            time.sleep(min(_POLL, max(0.0, next_try - now)))
