"""The data the reconciler passes between its stages: desired and observed state.

``desired()`` builds :class:`DesiredState` from the manifest and the lock;
``observe()`` builds :class:`ObservedState` from the cache and run records;
``make_plan()`` compares them. Plain frozen dataclasses holding tuples, so
both states can be written as literals in tests. No I/O here.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mlx_lama.backends.spec import (  # re-exported: the reconciler's states hold them
    LAUNCH_PARAMETERS,
    Distribution,
    Engine,
    RunRecord,
    ServeMode,
    ServerSpec,
)

__all__ = [
    "LAUNCH_PARAMETERS",
    "Distribution",
    "Engine",
    "RunRecord",
    "ServeMode",
    "ServerSpec",
]

Files = tuple[tuple[str, int], ...]  # (path in the repo, size in bytes), sorted by path


def files_present(present: Files, wanted: Files) -> bool:
    """Every wanted file is present with its size. Pure."""
    have = dict(present)
    return all(have.get(path) == size for path, size in wanted)


def repo_folder_name(repo_id: str) -> str:
    """The cache folder of a model repo: ``models--org--name`` (the hub cache layout)."""
    return "models--" + repo_id.replace("/", "--")


def snapshot_folder(cache_dir: Path, repo_id: str, commit: str) -> Path:
    """Where the files of ``repo_id`` at ``commit`` are in the cache. Pure."""
    return cache_dir / repo_folder_name(repo_id) / "snapshots" / commit


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model the manifest wants on disk."""

    name: str
    repo: str | None  # Hugging Face repo id; None for a local ``path`` model
    revision: str  # as the manifest asks ("main" when unset)
    commit: str | None = None  # from the lock; None until first resolved
    files: Files = ()  # from the lock: what a complete download contains
    path: Path | None = None  # local folder of a ``path`` model

    @property
    def target(self) -> str:
        if self.repo is None:
            return f"model:{self.path}"
        return f"model:{self.repo}@{self.revision}"


@dataclass(frozen=True, slots=True)
class ExternalSpec:
    """A model served by a server mlx-lama routes to but never starts (``backend = "external"``)."""

    name: str
    url: str  # the server's root, without /v1

    @property
    def target(self) -> str:
        return f"external:{self.name}"


@dataclass(frozen=True, slots=True)
class DesiredState:
    """What the manifest (and its lock) ask for. Tuples sorted by name.

    External models are only in ``externals``: nothing to pull, nothing to start.
    """

    models: tuple[ModelSpec, ...] = ()
    servers: tuple[ServerSpec, ...] = ()
    externals: tuple[ExternalSpec, ...] = ()
    project: str = ""  # the manifest's real path: the project these belong to
    notes: tuple[str, ...] = ()  # what the plan should say about these (user settings used)


@dataclass(frozen=True, slots=True)
class CachedRevision:
    """One snapshot of a repo in the Hugging Face cache."""

    commit: str
    refs: tuple[str, ...]
    size_on_disk: int
    files: Files
    snapshot_path: Path
    last_modified: float


@dataclass(frozen=True, slots=True)
class CachedRepo:
    """A model repo in the Hugging Face cache."""

    repo_id: str
    size_on_disk: int
    revisions: tuple[CachedRevision, ...]
    last_modified: float
    path: Path
    incomplete: bool = False  # a download was interrupted (``*.incomplete`` blobs)

    def revision(self, commit: str) -> CachedRevision | None:
        return next((r for r in self.revisions if r.commit == commit), None)


ServerState = Literal["running", "unresponsive", "dead", "foreign"]


@dataclass(frozen=True, slots=True)
class RunningServer:
    """A run record checked against the process table.

    running: pid alive, same process, port answers; unresponsive: same process,
    port silent; dead: no such process; foreign: the pid now belongs to
    another program (never signalled).
    """

    record: RunRecord
    state: ServerState
    project: str = ""  # real path of the manifest that started it ("" when none is recorded)
    orphan: bool = False  # that manifest is gone (or none was recorded)

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def alive(self) -> bool:
        return self.state in ("running", "unresponsive")


@dataclass(frozen=True, slots=True)
class ExternalStatus:
    """Whether an external server answered when observed."""

    name: str
    url: str
    answering: bool
    detail: str  # "HTTP 200, 3 models", "connection refused", ...


@dataclass(frozen=True, slots=True)
class Claims:
    """Why cached repos must stay: ``repos`` maps a repo id to who claims it (another
    project's manifest or lock, a running server); ``everything`` says why nothing may
    be deleted (a project whose files cannot be read), or is None. Built by
    ``claims.gather``."""

    repos: Mapping[str, str] = field(default_factory=dict)
    everything: str | None = None

    def why_kept(self, repo: str, pulled: Collection[str]) -> str | None:
        """Why ``repo`` must stay, or None when it may be deleted. ``pulled``: the
        repos mlx-lama itself downloaded (nothing else is ever deleted). Pure."""
        if repo not in pulled:
            return f"mlx-lama did not download {repo}; another tool may use it"
        if self.everything is not None:
            return self.everything
        return self.repos.get(repo)


@dataclass(frozen=True, slots=True)
class ObservedState:
    """One snapshot of the machine. Tuples sorted by repo id / server name."""

    repos: tuple[CachedRepo, ...] = ()
    servers: tuple[RunningServer, ...] = ()
    pulled: frozenset[str] = frozenset()  # repo ids mlx-lama itself downloaded
    warnings: tuple[str, ...] = ()
    externals: tuple[ExternalStatus, ...] = ()
    # pulled only by other projects: this project's --prune leaves them to their owners
    theirs: frozenset[str] = frozenset()
    claims: Claims = Claims()

    def repo(self, repo_id: str) -> CachedRepo | None:
        return next((r for r in self.repos if r.repo_id == repo_id), None)

    def server(self, name: str) -> RunningServer | None:
        return next((s for s in self.servers if s.name == name), None)

    def external(self, name: str) -> ExternalStatus | None:
        return next((e for e in self.externals if e.name == name), None)
