"""One snapshot of the machine: the Hugging Face cache, the servers we started,
and whether the external servers the manifest routes to answer.

Called by ``plan``, ``apply``, ``list`` and ``ps`` (and later the daemon). Reads
only. Anything odd (a damaged cache entry, an unreadable run record, a pid that
now belongs to another program, an external server that does not answer)
becomes a warning or a state in the snapshot, never an exception.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from mlx_lama.orchestrator import cache, claims, pulled, runrecords
from mlx_lama.orchestrator.state import (
    ExternalSpec,
    ExternalStatus,
    ObservedState,
    RunningServer,
)

if TYPE_CHECKING:
    import httpx

    from mlx_lama.orchestrator.inventory import RankRow
    from mlx_lama.orchestrator.state import RunRecord

EXTERNAL_PROBE_TIMEOUT = 1.0  # seconds per request; an external server on a LAN answers well within


def observe(
    *,
    cache_dir: Path | None = None,
    externals: Sequence[ExternalSpec] = (),
    project: str = "",
) -> ObservedState:
    """Scan the cache, read the pulled record, check every run record, gather what
    other projects claim, and probe each of ``externals`` (the desired state's
    external models). ``project``: the manifest key of the project looking."""
    repos, cache_warnings = cache.scan_cache(cache_dir)
    owners, pulled_warnings = pulled.read_pulled_checked()
    servers, record_warnings = _servers()
    statuses = observe_externals(externals)
    return ObservedState(
        repos=repos,
        servers=servers,
        pulled=frozenset(owners),
        theirs=frozenset(repo for repo, by in owners.items() if by and project not in by),
        claims=claims.gather(project, servers),
        warnings=(
            *cache_warnings,
            *pulled_warnings,
            *record_warnings,
            *(external_warning(s) for s in statuses if not s.answering),
        ),
        externals=statuses,
    )


def observe_externals(
    externals: Sequence[ExternalSpec], *, timeout: float = EXTERNAL_PROBE_TIMEOUT
) -> tuple[ExternalStatus, ...]:
    """Probe each external server, in parallel; sorted by name. Without externals
    this returns at once and never imports httpx (``plan`` stays quick)."""
    if not externals:
        return ()
    import httpx

    # trust_env=False: a proxy from the environment must not stand in for the server.
    with (
        httpx.Client(trust_env=False, timeout=timeout, follow_redirects=True) as client,
        ThreadPoolExecutor(max_workers=min(8, len(externals))) as pool,
    ):
        statuses = list(pool.map(lambda spec: probe_external(client, spec), externals))
    return tuple(sorted(statuses, key=lambda s: s.name))


def probe_external(client: httpx.Client, spec: ExternalSpec) -> ExternalStatus:
    """``GET {url}/v1/models`` (Ollama, LM Studio, mlx_lm.server and vllm-mlx all
    serve it); if that is not a 2xx, ``GET {url}/`` (Ollama answers "Ollama is
    running" there) so a server without a model list still counts as answering."""
    import httpx

    def status(answering: bool, detail: str) -> ExternalStatus:
        return ExternalStatus(name=spec.name, url=spec.url, answering=answering, detail=detail)

    try:
        response = client.get(f"{spec.url}/v1/models")
        if response.is_success:
            return status(True, _models_detail(response))
        root = client.get(f"{spec.url}/")
    except httpx.HTTPError as exc:
        return status(False, _error_detail(exc, client.timeout.read))
    detail = f"HTTP {response.status_code} on /v1/models, HTTP {root.status_code} on /"
    return status(root.is_success, detail)


def external_warning(status: ExternalStatus) -> str:
    """The warning ``plan`` prints for an external server that does not answer. Pure."""
    return f"external server {status.name!r} at {status.url} is not answering: {status.detail}"


def observe_servers() -> tuple[RunningServer, ...]:
    """Only the servers (for ``ps``): no cache scan."""
    return _servers()[0]


def resident_memory(pid: int) -> int | None:
    """Resident bytes of ``pid`` and its children, or None if it cannot be read."""
    import psutil

    try:
        process = psutil.Process(pid)
        total = process.memory_info().rss
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
    except psutil.Error:
        return None
    return int(total)


def rank_rows(record: RunRecord) -> tuple[RankRow, ...]:
    """The ranks a distributed server's launcher runs now, with the resident
    memory of the ones on this machine."""
    from mlx_lama.backends.distributed import rank_processes
    from mlx_lama.orchestrator.inventory import RankRow

    return tuple(
        RankRow(
            rank=rank.index,
            host=rank.host,
            pid=rank.pid,
            via_ssh=rank.via_ssh,
            memory=None if rank.via_ssh else resident_memory(rank.pid),
        )
        for rank in rank_processes(record)
    )


def _servers() -> tuple[tuple[RunningServer, ...], list[str]]:
    records, warnings = runrecords.read_records()
    servers = sorted((runrecords.inspect_record(r) for r in records), key=lambda s: s.name)
    return tuple(servers), list(warnings)


def _models_detail(response: httpx.Response) -> str:
    head = f"HTTP {response.status_code}"
    try:
        models = response.json().get("data")
    except (ValueError, AttributeError):
        return head
    if not isinstance(models, list):
        return head
    return f"{head}, {len(models)} model{'' if len(models) == 1 else 's'}"


def _error_detail(exc: httpx.HTTPError, timeout: float | None) -> str:
    import httpx

    text = str(exc)
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {timeout or EXTERNAL_PROBE_TIMEOUT:g} s"
    if isinstance(exc, httpx.ConnectError):
        if "refused" in text.lower():
            return "connection refused"
        return f"cannot connect: {text}" if text else "cannot connect"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
