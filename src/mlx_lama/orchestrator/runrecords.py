"""Run records (``run/NAME.json``): which server process mlx-lama started, and is it still ours?

``process.start_server`` writes a record right after it spawns a server and
``process.stop_server`` deletes it; ``observe()`` reads them all and checks
each against the process table with :func:`inspect_record`. Records are
written atomically; a damaged one becomes a warning, never an exception.

This module never signals a process and never speaks HTTP: inspecting is one
``psutil`` lookup and one TCP connect, so a whole ``plan`` stays quick.
"""

from __future__ import annotations

import json
import logging
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mlx_lama import paths
from mlx_lama.atomic import atomic_write_text
from mlx_lama.backend_names import BUILTIN_BACKENDS
from mlx_lama.backends.base import client_host
from mlx_lama.errors import MlxLamaError
from mlx_lama.orchestrator.projects import project_key
from mlx_lama.orchestrator.state import RunningServer, RunRecord, ServerState

if TYPE_CHECKING:
    import psutil

log = logging.getLogger(__name__)

RECORD_FORMAT = 1
CREATE_TIME_TOLERANCE = 1.0  # seconds; psutil's create_time is exact to 1/100 s
_SAFE_STEM = re.compile(r"[a-z0-9_][a-z0-9_.@+-]{0,239}")

Identity = Literal["ours", "dead", "foreign"]


class RunRecordError(MlxLamaError):
    """A server name cannot be turned into a run-record file name."""


def record_stem(name: str) -> str:
    """The file name (without ``.json``) for server ``name``; also names its log file.

    ``/`` becomes ``+`` and ``:`` becomes ``@`` (neither is allowed in a name,
    so different names never share a file), lower-cased because model names
    compare case-insensitively and macOS file names do too. Anything that
    could leave the folder (``..``, a leading dot, other characters) is refused.
    """
    stem = name.lower().replace("/", "+").replace(":", "@")
    if ".." in stem or not _SAFE_STEM.fullmatch(stem):
        raise RunRecordError(
            f"server name {name!r} cannot be used as a file name",
            hint="model names may use letters, digits, '_', '.', '-', one ':' and '/'",
        )
    return stem


def record_path(name: str) -> Path:
    """``run/<stem>.json`` for server ``name`` (under ``$MLX_LAMA_HOME``)."""
    return paths.run_dir() / f"{record_stem(name)}.json"


def record_to_json(record: RunRecord) -> str:
    """A record as a JSON document (stable key order, one trailing newline)."""
    data: dict[str, object] = {
        "format": RECORD_FORMAT,
        "name": record.name,
        "pid": record.pid,
        "port": record.port,
        "host": record.host,
        "engine": record.engine,
        "model": record.model,
        "spec_hash": record.spec_hash,
        "argv": list(record.argv),
        "started_at": record.started_at,
        "process_started": record.process_started,
        "log_path": record.log_path,
        "manifest": record.manifest,
        "spec": record.spec,
    }
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _field(data: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(key)
    # bool is an int in Python; a pid of `true` is still damage.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"field {key!r} is missing or not a {getattr(kind, '__name__', kind)}")
    return value


def record_from_json(text: str) -> RunRecord:
    """Parse :func:`record_to_json` output; ``ValueError`` says what is wrong."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if data.get("format") != RECORD_FORMAT:
        raise ValueError(f"unknown record format {data.get('format')!r}")
    engine = _field(data, "engine", str)
    if engine not in BUILTIN_BACKENDS:
        raise ValueError(f"unknown engine {engine!r}")
    argv = _field(data, "argv", list)
    if not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError("field 'argv' must be a non-empty list of strings")
    spec = data.get("spec", {})
    if not isinstance(spec, dict):
        raise ValueError("field 'spec' is not an object")
    return RunRecord(
        name=_field(data, "name", str),
        pid=_field(data, "pid", int),
        port=_field(data, "port", int),
        host=_field(data, "host", str),
        engine=engine,
        model=_field(data, "model", str),
        spec_hash=_field(data, "spec_hash", str),
        argv=tuple(argv),
        started_at=float(_field(data, "started_at", (int, float))),
        process_started=float(_field(data, "process_started", (int, float))),
        log_path=_field(data, "log_path", str),
        manifest=_field(data, "manifest", str) if "manifest" in data else "",
        spec=spec,
    )


def write_record(record: RunRecord) -> Path:
    """Write (or replace) the record of ``record.name`` atomically; return its path."""
    path = record_path(record.name)
    atomic_write_text(path, record_to_json(record))
    log.debug("wrote run record %s (pid %d)", path, record.pid)
    return path


def read_records() -> tuple[list[RunRecord], list[str]]:
    """Every readable record (sorted by name) and a warning per file that is not.

    Never raises: an unreadable folder or a damaged file is a warning, and
    ``observe`` carries on (the damaged file is left for a person to look at).
    """
    folder = paths.run_dir()
    records: list[RunRecord] = []
    warnings: list[str] = []
    try:
        files = sorted(folder.glob("*.json"))
    except OSError as exc:
        return [], [f"cannot list run records in {folder}: {exc}"]
    for path in files:
        if path.name.startswith("."):
            continue  # an atomic write in progress
        try:
            record = record_from_json(path.read_text(encoding="utf-8"))
            if record_path(record.name).name != path.name:
                raise ValueError(f"it names server {record.name!r}, whose record is elsewhere")
        except (OSError, UnicodeDecodeError, ValueError, MlxLamaError) as exc:
            warnings.append(
                f"run record {path} is damaged and was ignored ({exc}); "
                "delete it once no server it describes is running"
            )
            continue
        records.append(record)
    records.sort(key=lambda r: r.name)
    return records, warnings


def delete_record(name: str) -> None:
    """Delete the record of server ``name``; no error if there is none."""
    record_path(name).unlink(missing_ok=True)


def find_process(record: RunRecord) -> tuple[Identity, psutil.Process | None]:
    """Is ``record.pid`` still the process the record describes? (and that process).

    ``dead``: no such process (or a zombie); ``foreign``: the pid belongs to
    another program now (different start time or command line), or we may not
    look at it; ``ours``: same start time (within a second) and same arguments.
    The interpreter path (``argv[0]``) is not compared: macOS framework Pythons
    re-exec under another path. The process is returned only when it is ours;
    its psutil methods re-check the start time before they send a signal.
    """
    import psutil  # here, not at the top: ~60 ms, and only needed when records exist

    try:
        proc = psutil.Process(record.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return "dead", None
        if abs(proc.create_time() - record.process_started) > CREATE_TIME_TOLERANCE:
            return "foreign", None
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return "dead", None
    except psutil.AccessDenied:
        return "foreign", None
    if tuple(cmdline[1:]) != record.argv[1:]:
        return "foreign", None
    return "ours", proc


def process_identity(record: RunRecord) -> Identity:
    """Just the verdict of :func:`find_process`."""
    return find_process(record)[0]


def port_answers(host: str, port: int, timeout: float) -> bool:
    """True when a TCP connection to ``host:port`` opens within ``timeout`` seconds."""
    try:
        with socket.create_connection((client_host(host), port), timeout=timeout):
            return True
    except OSError:
        return False


def inspect_record(record: RunRecord, *, probe_timeout: float = 0.2) -> RunningServer:
    """Check ``record`` against the process table and its port (no HTTP, no signals),
    and say which project started it (an orphan: that project's manifest is gone)."""
    project = project_key(record.manifest)
    orphan = not project or not Path(project).is_file()
    identity = process_identity(record)
    if identity != "ours":
        state: ServerState = identity
    elif not port_answers(record.host, record.port, probe_timeout):
        state = "unresponsive"
    else:
        state = "running"
    return RunningServer(record=record, state=state, project=project, orphan=orphan)
