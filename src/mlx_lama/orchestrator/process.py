"""Start and stop model server processes: spawn detached, wait until ready, stop safely.

``apply`` and the daemon's scheduler call :func:`start_server` and
:func:`stop_server`. A server runs in its own
session with its output appended to ``logs/NAME.log``, so it outlives the CLI;
its run record is written right after the spawn, so even a Ctrl-C during the
readiness wait leaves a record that ``observe`` and ``stop`` can act on.

Ready means a one-token chat completion succeeded, not "the port is open"
(mlx-lm answers ``/health`` before its model is loaded; see ``readiness.py``).
This module decides nothing about *whether* to start or stop: the planner and
the scheduler's policies do. It never signals a process whose start time and
command line differ from its record.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from contextlib import suppress
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import psutil

from mlx_lama import paths
from mlx_lama.backends.base import LaunchSpec, client_host, launch_spec
from mlx_lama.errors import MlxLamaError
from mlx_lama.orchestrator import runrecords
from mlx_lama.orchestrator.projects import project_key
from mlx_lama.orchestrator.readiness import one_token, wait_ready
from mlx_lama.orchestrator.state import RunRecord, ServerSpec

log = logging.getLogger(__name__)

# Servers this process spawned. Holding the Popen keeps Python from warning
# about a child it never waited for, and lets us reap it (no zombies).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}

# The engines read local folders only; a Hub token has no business in them.
_DROPPED_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")

# Ports choose_port handed out lately, so two servers starting at once (the daemon
# loads on-demand models in parallel) do not both pick one that is not bound yet.
_HANDED_OUT: dict[int, float] = {}
_HANDED_OUT_LOCK = threading.Lock()
_HANDED_OUT_FOR = 60.0  # seconds; an engine binds its port well within its start

LOG_TAIL_LINES = 20
_RETRY_PAUSE = 0.25
_KILL_WAIT = 10.0
_TAIL_BYTES = 64 * 1024


class ServerStartError(MlxLamaError):
    """A server could not be started or never became ready; the message ends with its log."""


class ServerNameTaken(ServerStartError):
    """Another project runs a server under this name (server names are machine-wide)."""


class ServerStopError(MlxLamaError):
    """A server process survived SIGTERM and SIGKILL."""


def tail_log(path: Path, lines: int = LOG_TAIL_LINES, *, start: int = 0) -> str:
    """The last ``lines`` lines of ``path`` (only what follows byte ``start``); "" if unreadable."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(start, size - _TAIL_BYTES))
            data = handle.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-lines:])


def log_path_for(name: str) -> Path:
    """``logs/<stem>.log``: the output of server ``name`` (same stem as its run record)."""
    return paths.logs_dir() / f"{runrecords.record_stem(name)}.log"


def start_server(
    server: ServerSpec,
    *,
    manifest: str = "",
    port: int | None = None,
    ready_timeout: float | None = None,
    record_name: str | None = None,
) -> RunRecord:
    """Start ``server`` detached, record it, and return once it answers a generation.

    ``port`` overrides ``server.port``; with neither, a free port on
    ``server.host`` is chosen (see :func:`choose_port`). ``ready_timeout`` defaults to the engine's.
    ``record_name`` records it under another name than ``server.name`` (a
    successor starting beside the server it replaces; see :func:`rename_record`).
    Raises :class:`ServerStartError` (with the log tail) when the process
    exits, reports a fatal error or is not ready in time; the server is then
    stopped and its record deleted. Refuses to start a server whose record
    points at a live process of ours (stop that one first).
    """
    recorded_as = record_name or server.name
    _refuse_if_running(recorded_as, manifest)
    chosen = port if port is not None else server.port or choose_port(server)
    launch = launch_spec(server, chosen)
    if server.model_path is not None and not server.model_path.expanduser().is_dir():
        raise ServerStartError(
            f"cannot start {server.name!r}: its model folder {server.model_path} does not exist",
            hint="run `mlx-lama apply` to pull it, or fix its `path` in mlxlama.toml",
        )
    log_path = log_path_for(server.name)
    proc, log_start = _spawn(server, launch, log_path)
    try:
        created = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:  # pragma: no cover - our unreaped child always exists
        created = time.time()
    record = RunRecord(
        name=recorded_as,
        pid=proc.pid,
        port=chosen,
        host=server.host,
        engine=server.engine,
        model=server.model,
        spec_hash=server.spec_hash,
        argv=launch.argv,
        started_at=time.time(),
        process_started=created,
        log_path=str(log_path),
        manifest=manifest,
        spec=server.launch_fields(),
    )
    try:
        runrecords.write_record(record)
    except BaseException:
        _discard(record, proc)  # nothing would know about it: don't leave it running
        raise
    log.info("started %s server %r: pid %d on %s", server.engine, server.name, proc.pid, chosen)

    timeout = ready_timeout if ready_timeout is not None else launch.ready_timeout
    began = time.monotonic()
    problem = wait_ready(launch, proc, log_path, log_start, timeout)
    if problem is None:
        log.info("server %r ready in %.1fs", server.name, time.monotonic() - began)
        return record

    _discard(record, proc)
    tail = tail_log(log_path, LOG_TAIL_LINES, start=log_start)
    hint = f"see {log_path}"
    if "address already in use" in tail.lower():
        hint = f"port {chosen} is taken by another program; choose another `port` or leave it out"
    raise ServerStartError(
        f"server {server.name!r} ({server.engine}) did not start: {problem}\n"
        f"--- last lines of {log_path} ---\n{tail}",
        hint=hint,
    )


def stop_server(record: RunRecord, *, timeout: float = 15.0) -> None:
    """Stop the server ``record`` describes, then delete the record.

    Only a process that is still ours (same start time and command line) is
    signalled: SIGTERM to its process group, up to ``timeout`` seconds, then
    SIGKILL. A dead process, or a pid now owned by another program, just has
    its record deleted. Raises :class:`ServerStopError` (and keeps the record)
    if it survives SIGKILL.
    """
    identity, proc = runrecords.find_process(record)
    if identity == "foreign":
        log.warning(
            "run record of %r points at pid %d, which is now another program; "
            "not signalling it, only deleting the record",
            record.name,
            record.pid,
        )
    elif identity == "dead":
        _reap(record.pid)
    elif proc is not None:
        _terminate(proc, timeout)
        log.info("stopped server %r (pid %d)", record.name, record.pid)
    runrecords.delete_record(record.name)


def rename_record(record: RunRecord, name: str) -> RunRecord:
    """Record the server of ``record`` under ``name`` instead (whose old record must
    be gone: its server stopped). The new record is written before the old one is
    deleted, so the process is never unrecorded."""
    renamed = replace(record, name=name)
    runrecords.write_record(renamed)
    runrecords.delete_record(record.name)
    return renamed


def exited(record: RunRecord) -> str | None:
    """None while the recorded server runs; otherwise how it ended ("exited with
    code 1", "was killed by SIGKILL", "is gone"). Cheap enough to call often: a
    child of this process is polled, any other one looked up once."""
    child = _CHILDREN.get(record.pid)
    if child is not None:
        code = child.poll()
        if code is None:
            return None
        if code < 0:
            with suppress(ValueError):
                return f"was killed by {signal.Signals(-code).name}"
        return f"exited with code {code}"
    return None if runrecords.process_identity(record) == "ours" else "is gone"


def running_record(name: str, *, manifest: str | None = None) -> RunRecord | None:
    """The run record of server ``name`` if its process is still ours (alive, same
    start time and command line) and, with ``manifest``, was started for that
    manifest's project; None otherwise."""
    path = runrecords.record_path(name)
    try:
        existing = runrecords.record_from_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        log.warning("ignoring damaged run record %s (%s)", path, exc)
        return None
    if manifest is not None and project_key(existing.manifest) != project_key(manifest):
        return None
    return existing if runrecords.process_identity(existing) == "ours" else None


def take_over(
    server: ServerSpec, *, manifest: str, ready_timeout: float | None = None
) -> RunRecord | None:
    """A server for ``server`` that something else started for the same project
    (``manifest``: ``mlx-lama apply`` while the daemon runs, or an earlier daemon),
    once it answers a generation; None when there is none. One of this project's
    from another spec is stopped (it is stale), and so is one that never becomes
    ready. Another project's server of the same name is never touched."""
    record = running_record(server.name, manifest=manifest)
    if record is None:
        return None
    if record.spec_hash != server.spec_hash:
        log.info("stopping %r (pid %d): started from another spec", server.name, record.pid)
        stop_server(record)
        return None
    launch = launch_spec(server, record.port)
    timeout = ready_timeout if ready_timeout is not None else launch.ready_timeout
    deadline = time.monotonic() + timeout
    while (problem := one_token(launch, max(1.0, deadline - time.monotonic()))) is not None:
        if time.monotonic() >= deadline or runrecords.process_identity(record) != "ours":
            log.warning("not taking over %r (pid %d): %s", server.name, record.pid, problem)
            stop_server(record)
            return None
        time.sleep(_RETRY_PAUSE)
    log.info("took over running server %r (pid %d)", server.name, record.pid)
    return record


def _refuse_if_running(name: str, manifest: str) -> None:
    existing = running_record(name)
    if existing is None:
        return
    owner = project_key(existing.manifest)
    if owner == project_key(manifest):
        raise ServerStartError(
            f"server {name!r} is already running (pid {existing.pid}, port {existing.port})",
            hint="`mlx-lama ps` shows it; `mlx-lama apply` restarts it when its spec changed",
        )
    raise ServerNameTaken(
        f"server {name!r} is already running for another project ({owner or 'none recorded'}; "
        f"pid {existing.pid}, port {existing.port})",
        hint="server names are shared by every project on this machine: rename the model "
        "in one of the two manifests, or stop it there",
    )


def choose_port(server: ServerSpec) -> int:
    """The port for ``server``, which has none: any free one, or, with ``first_port``
    (the user's default_port), the first from there up that is bindable and neither
    declared by the manifest nor recorded or lately handed out for another server."""
    if server.first_port is None:
        return _free_port(server.host)
    records, _problems = runrecords.read_records()
    skip = {*server.taken_ports, *(r.port for r in records if r.name != server.name)}
    with _HANDED_OUT_LOCK:
        now = time.monotonic()
        for handed, when in list(_HANDED_OUT.items()):
            if now - when > _HANDED_OUT_FOR:
                del _HANDED_OUT[handed]
        for candidate in range(server.first_port, 65536):
            if candidate in skip or candidate in _HANDED_OUT:
                continue
            if _bindable(server.host, candidate):
                _HANDED_OUT[candidate] = now
                return candidate
    raise ServerStartError(
        f"cannot start {server.name!r}: no free port from {server.first_port} up "
        "(the default_port of the user settings)",
        hint="lower default_port (`mlx-lama config` shows where it is set), or give the "
        "model a port in mlxlama.toml",
    )


def _bindable(host: str, port: int) -> bool:
    """Nothing listens on ``host``:``port`` now (no SO_REUSEADDR: a port some socket
    still holds counts as taken, which only moves the search on)."""
    family = socket.AF_INET6 if ":" in client_host(host) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _free_port(host: str) -> int:
    """A port nobody listens on now (the server binds it a moment later)."""
    family = socket.AF_INET6 if ":" in client_host(host) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _child_env(launch: LaunchSpec) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env.update(launch.env)
    return env


def _spawn(
    server: ServerSpec, launch: LaunchSpec, log_path: Path
) -> tuple[subprocess.Popen[bytes], int]:
    """Spawn detached, output appended to ``log_path``; return it and where its output starts."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    workdir = paths.home()  # fixed cwd: engines treat existing relative paths as model folders
    workdir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).astimezone().isoformat(timespec="seconds")
    header = (
        f"\n===== {stamp} mlx-lama starts {server.engine} server {server.name!r} "
        f"on {launch.host}:{launch.port} =====\n$ {shlex.join(launch.argv)}\n"
    )
    with log_path.open("ab") as log_file:
        log_file.write(header.encode())
        log_file.flush()
        log_start = log_file.tell()
        try:
            proc = subprocess.Popen(
                list(launch.argv),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=_child_env(launch),
                cwd=workdir,
                start_new_session=True,
            )
        except OSError as exc:
            raise ServerStartError(
                f"cannot run {launch.argv[0]} for server {server.name!r}: {exc}",
                hint="`mlx-lama backends` says which engines are installed; `mlx-lama install "
                "ENGINE` installs one",
            ) from exc
    _CHILDREN[proc.pid] = proc
    return proc, log_start


def _discard(record: RunRecord, proc: subprocess.Popen[bytes]) -> None:
    """Stop a server that failed to start (and anything it forked); drop its record."""
    try:
        stop_server(record, timeout=5.0)
    except (MlxLamaError, OSError) as exc:  # survived SIGKILL, or the record is unwritable
        log.warning("while stopping failed server %r: %s", record.name, exc)
    # Workers it forked are in its process group even when it has exited.
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    _reap(proc.pid)
    with suppress(OSError):
        runrecords.delete_record(record.name)


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]


def _gone(proc: psutil.Process) -> bool:
    """Has it exited? Our own child only once reaped: while its threads are still
    being torn down the kernel already shows it as a zombie, yet cannot reap it."""
    child = _CHILDREN.get(proc.pid)
    if child is not None:
        if child.poll() is None:
            return False
        del _CHILDREN[proc.pid]
        return True
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(proc: psutil.Process, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not _gone(proc):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _signal(proc: psutil.Process, sig: signal.Signals, group: bool) -> None:
    """Send ``sig`` to the process (psutil re-checks it is the same one) or its group."""
    with suppress(psutil.NoSuchProcess, ProcessLookupError):
        if group and proc.is_running():
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)


def _terminate(proc: psutil.Process, timeout: float) -> None:
    try:
        group = os.getpgid(proc.pid) == proc.pid  # we made it a session leader
    except ProcessLookupError:
        group = False
    _signal(proc, signal.SIGTERM, group)
    _signal(proc, signal.SIGCONT, group)  # a stopped process must run to act on SIGTERM
    if not _wait_gone(proc, timeout):
        log.warning("pid %d ignored SIGTERM for %gs; sending SIGKILL", proc.pid, timeout)
        _signal(proc, signal.SIGKILL, group)
        if not _wait_gone(proc, _KILL_WAIT):
            raise ServerStopError(
                f"pid {proc.pid} survived SIGKILL",
                hint="it may be stuck in the kernel; check `ps` and stop it by hand",
            )
    if group:  # leftover workers of the group
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
