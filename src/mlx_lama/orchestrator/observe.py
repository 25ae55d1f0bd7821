"""One snapshot of the machine: the Hugging Face cache and the servers we started.

Called by ``plan``, ``apply``, ``list`` and ``ps`` (and later the daemon). Reads
only. Anything odd (a damaged cache entry, an unreadable run record, a pid that
now belongs to another program) becomes a warning or a state in the snapshot,
never an exception.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from mlx_lama.orchestrator import cache, pulled, runrecords
from mlx_lama.orchestrator.state import ObservedState, RunningServer


def observe(*, cache_dir: Path | None = None) -> ObservedState:
    """Scan the cache, read the pulled record, and check every run record."""
    repos, cache_warnings = cache.scan_cache(cache_dir)
    repos_pulled, pulled_warnings = pulled.read_pulled_checked()
    servers, record_warnings = _servers()
    return ObservedState(
        repos=repos,
        servers=servers,
        pulled=repos_pulled,
        warnings=(*cache_warnings, *pulled_warnings, *record_warnings),
    )


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


def _servers() -> tuple[tuple[RunningServer, ...], list[str]]:
    records, warnings = runrecords.read_records()
    servers = sorted((runrecords.inspect_record(r) for r in records), key=lambda s: s.name)
    return tuple(servers), list(warnings)
