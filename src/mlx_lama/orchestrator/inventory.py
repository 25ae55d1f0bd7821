"""The rows of ``mlx-lama list`` and ``mlx-lama ps``, from desired and observed state.

Pure: the CLI renders these as tables or JSON; the gateway's ``/api/tags`` and
``/api/ps`` can build on the same rows later.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mlx_lama.netaddr import url_port
from mlx_lama.orchestrator.projects import project_name
from mlx_lama.orchestrator.state import (
    CachedRepo,
    CachedRevision,
    DesiredState,
    ExternalStatus,
    ObservedState,
    RunningServer,
)


@dataclass(frozen=True, slots=True)
class ModelRow:
    """One line of ``list``: a manifest model, or a cached repo the manifest does not name."""

    name: str
    repo: str | None
    commit: str | None
    size: int  # bytes on disk for this revision (0: not pulled)
    modified: float  # epoch seconds (0: unknown)
    status: str  # served | in manifest | not pulled | not in manifest | external | remote
    url: str | None = None  # an external model's server, or the remote gateway's root
    remote: str | None = None  # the [remotes.NAME] that serves it

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class RankRow:
    """One rank of a server sharded over several hosts. ``pid`` is local: the rank's
    own process here, or the ssh connection that runs it on another host."""

    rank: int
    host: str
    pid: int
    via_ssh: bool
    memory: int | None  # resident bytes (None for a remote rank)


@dataclass(frozen=True, slots=True)
class ServerRow:
    """One line of ``ps``: a server mlx-lama started, or an external one it routes to
    (pid, start time and memory unknown: None)."""

    name: str
    backend: str
    port: int
    pid: int | None
    state: str  # running | unresponsive | dead | foreign | answering | not answering
    #             | restarting | failed (from the daemon)
    started_at: float | None
    memory: int | None  # resident bytes of the server and its children
    url: str | None = None  # external servers only
    detail: str | None = None  # external: what the probe saw; restarting/failed: why
    hosts: tuple[str, ...] = ()  # a distributed server's hosts, rank 0 first
    ranks: tuple[RankRow, ...] = ()  # its ranks running now
    project: str = ""  # the real path of the manifest it belongs to
    orphan: bool = False  # that manifest is gone
    estimate: int | None = None  # what the memory budget counts it as (memory.py)

    @property
    def project_label(self) -> str:
        """The PROJECT column: the project's short name, marked when it is an orphan."""
        name = project_name(self.project)
        return f"{name} (orphan)" if self.orphan else name

    @property
    def up(self) -> bool:
        return self.started_at is not None and self.state in ("running", "unresponsive")

    def to_json(self, now: float) -> dict[str, object]:
        row = asdict(self)
        row["project_name"] = project_name(self.project)
        row["uptime"] = now - self.started_at if self.up and self.started_at is not None else None
        return row


def inventory(desired: DesiredState, observed: ObservedState) -> list[ModelRow]:
    """Manifest models (external ones too) by name, then cached repos no manifest
    model uses. Pure."""
    serving = {s.name for s in observed.servers if s.state == "running"}
    rows = [
        ModelRow(
            name=e.name, repo=None, commit=None, size=0, modified=0.0, status="external", url=e.url
        )
        for e in desired.externals
    ]
    for model in desired.models:
        cached = observed.repo(model.repo) if model.repo else None
        revision = None
        if cached is not None:
            revision = cached.revision(model.commit) if model.commit else _main(cached)
        if model.repo is not None and revision is None:
            status = "not pulled"
        else:
            status = "served" if model.name in serving else "in manifest"
        rows.append(
            ModelRow(
                name=model.name,
                repo=model.repo,
                commit=revision.commit if revision else model.commit,
                size=sum(size for _p, size in revision.files) if revision else 0,
                modified=revision.last_modified if revision else 0.0,
                status=status,
            )
        )
    rows.sort(key=lambda row: row.name)
    used = {m.repo for m in desired.models}
    for repo in observed.repos:
        if repo.repo_id in used:
            continue
        latest = _main(repo)
        rows.append(
            ModelRow(
                name=repo.repo_id,
                repo=repo.repo_id,
                commit=latest.commit if latest else None,
                size=repo.size_on_disk,
                modified=repo.last_modified,
                status="not in manifest",
            )
        )
    return rows


def server_rows(
    servers: tuple[RunningServer, ...],
    memory: dict[int, int],
    ranks: dict[str, tuple[RankRow, ...]] | None = None,
    estimates: dict[int, int] | None = None,
) -> list[ServerRow]:
    """``ps`` rows; ``memory`` maps pid -> resident bytes for live servers, ``ranks``
    server name -> its ranks for distributed ones, ``estimates`` pid -> the memory
    the scheduler counts the server as. Pure."""
    return [
        ServerRow(
            name=s.record.name,
            backend=s.record.engine,
            port=s.record.port,
            pid=s.record.pid,
            state=s.state,
            started_at=s.record.started_at,
            memory=memory.get(s.record.pid),
            estimate=(estimates or {}).get(s.record.pid),
            hosts=record_hosts(s.record.spec),
            ranks=(ranks or {}).get(s.record.name, ()),
            project=s.project,
            orphan=s.orphan,
        )
        for s in servers
    ]


def record_hosts(spec: dict[str, object]) -> tuple[str, ...]:
    """The hosts in a run record's launch fields (none for a one-machine server)."""
    distribution = spec.get("distribution")
    if not isinstance(distribution, dict):
        return ()
    hosts = distribution.get("hosts")
    if isinstance(hosts, list) and hosts:
        return tuple(str(h) for h in hosts)
    hostfile = distribution.get("hostfile")
    return (f"hostfile {hostfile}",) if hostfile else ()


def supervised_rows(models: dict[str, dict[str, object]], project: str) -> list[ServerRow]:
    """``ps`` rows for what the daemon of ``project`` reports as restarting or failed
    (``/health``'s ``models``); those have no live process to list otherwise. Pure."""
    rows = []
    for name, entry in sorted(models.items()):
        state = entry.get("state")
        if state not in ("restarting", "failed"):
            continue
        failures, port = entry.get("failures"), entry.get("port")
        detail = str(entry.get("error") or "")
        if isinstance(failures, int):
            detail += f" ({failures} failure{'s' if failures != 1 else ''} in 10 minutes)"
        rows.append(
            ServerRow(
                name=name,
                backend=str(entry.get("backend") or "-"),
                port=port if isinstance(port, int) else 0,
                pid=None,
                state=str(state),
                started_at=None,
                memory=None,
                detail=detail,
                project=project,
            )
        )
    return rows


def external_rows(statuses: tuple[ExternalStatus, ...], project: str) -> list[ServerRow]:
    """``ps`` rows for the external servers the manifest of ``project`` routes to. Pure."""
    return [
        ServerRow(
            name=e.name,
            backend="external",
            port=url_port(e.url),
            pid=None,
            state="answering" if e.answering else "not answering",
            started_at=None,
            memory=None,
            url=e.url,
            detail=e.detail,
            project=project,
        )
        for e in statuses
    ]


def _main(cached: CachedRepo) -> CachedRevision | None:
    """The revision ``main`` points at, else the newest one."""
    for revision in cached.revisions:
        if "main" in revision.refs:
            return revision
    return max(cached.revisions, key=lambda r: r.last_modified, default=None)
