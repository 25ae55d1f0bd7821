"""Are a distributed model's files on every host? Checked over ssh for ``plan``.

Every rank of a distributed server opens the same model folder path, so each
host needs the files there. For each host that is not this machine (this
one is the reconciler's own business: it pulls), :func:`check_hosts` runs a
short Python script over ``ssh`` (the connection ``mlx.launch`` and mlx-lama's
launcher use, with the same Python path the ranks run with) that reports
which files are missing or of another size. ``files = "shared"`` in the
manifest skips the check. Reads only; a host that cannot be checked is a
finding, never an exception.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mlx_lama.orchestrator.state import ServerSpec

SSH_TIMEOUT = 20.0  # seconds for one host's whole check
_CONNECT_TIMEOUT = "5"

Files = tuple[tuple[str, int], ...]

# Runs on the other host: reads {"folder", "files": [[path, size], ...]} from
# stdin and prints the paths that are missing or have another size.
CHECK_SCRIPT = """\
import json, os, sys
job = json.load(sys.stdin)
missing = []
for path, size in job["files"]:
    try:
        ok = os.stat(os.path.join(job["folder"], path)).st_size == size
    except OSError:
        ok = False
    if not ok:
        missing.append(path)
print(json.dumps(missing))
"""


@dataclass(frozen=True, slots=True)
class HostFiles:
    """What one host has of one server's model folder."""

    server: str
    host: str
    folder: str
    total: int
    missing: tuple[str, ...] = ()
    error: str | None = None  # could not check: why

    @property
    def complete(self) -> bool:
        return self.error is None and not self.missing

    def warning(self) -> str:
        """The line ``plan`` prints for a host that lacks files or cannot be checked."""
        if self.error is not None:
            return (
                f"server {self.server!r}: cannot check the model files on {self.host}: {self.error}"
            )
        some = f"{len(self.missing)} of {self.total}"
        return (
            f"server {self.server!r}: {self.host} lacks {some} model files in {self.folder} "
            f"(first: {self.missing[0]}); copy them with "
            f"`rsync -aL --relative {shlex.quote(self.folder)}/ {self.host}:/`, "
            'or set files = "shared" if every host sees this folder'
        )


def folder_files(folder: Path) -> Files:
    """Every file under ``folder`` (links followed, as the engine reads them) with its size."""
    found = []
    for root, _dirs, names in os.walk(folder, followlinks=True):
        for name in names:
            path = Path(root) / name
            try:
                found.append((path.relative_to(folder).as_posix(), path.stat().st_size))
            except OSError:
                continue
    return tuple(sorted(found))


def check_hosts(servers: Sequence[ServerSpec]) -> tuple[HostFiles, ...]:
    """Check every other host of every distributed server whose folder is here, in parallel."""
    from mlx_lama.backends.hosts import LaunchProblem, is_this_machine, read_hostfile

    jobs: list[tuple[str, str, Path, Files]] = []
    problems: list[HostFiles] = []
    for server in servers:
        spec = server.distribution
        if spec is None or spec.files == "shared" or server.model_path is None:
            continue
        folder = server.model_path.expanduser().absolute()
        if not folder.is_dir():
            continue  # not pulled yet: the plan pulls it first
        hosts = list(spec.hosts)
        if spec.hostfile is not None:
            try:
                hosts = [host for host, _ips in read_hostfile(spec.hostfile)]
            except LaunchProblem as exc:
                problems.append(
                    HostFiles(server.name, str(spec.hostfile), str(folder), 0, (), str(exc))
                )
                continue
        wanted = folder_files(folder)
        for host in dict.fromkeys(hosts):
            if not is_this_machine(host):
                jobs.append((server.name, host, folder, wanted))
    if not jobs:
        return tuple(problems)
    with ThreadPoolExecutor(max_workers=min(8, len(jobs))) as pool:
        checked = list(pool.map(lambda job: check_host(*job), jobs))
    return (*problems, *checked)


def check_host(server: str, host: str, folder: Path, files: Files) -> HostFiles:
    """Run :data:`CHECK_SCRIPT` on ``host`` over ssh, with this Python's path."""
    remote = shlex.join([sys.executable, "-c", CHECK_SCRIPT])
    command = [
        "ssh",
        "-o",
        "BatchMode=yes",
        "-o",
        f"ConnectTimeout={_CONNECT_TIMEOUT}",
        host,
        remote,
    ]
    job = json.dumps({"folder": str(folder), "files": files})
    base = HostFiles(server, host, str(folder), len(files))
    try:
        result = subprocess.run(
            command, input=job, capture_output=True, text=True, timeout=SSH_TIMEOUT, check=False
        )
    except FileNotFoundError:
        return _with(base, error="ssh is not installed here")
    except subprocess.TimeoutExpired:
        return _with(base, error=f"no answer within {SSH_TIMEOUT:g} s")
    if result.returncode == 255:
        last = (result.stderr.strip().splitlines() or ["ssh failed"])[-1]
        return _with(base, error=f"{last} (the ranks need passwordless ssh to it)")
    if result.returncode == 127:
        return _with(
            base,
            error=f"{sys.executable} is not there (every host needs the same Python path)",
        )
    try:
        missing = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        detail = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
        return _with(base, error=detail)
    return _with(base, missing=tuple(str(m) for m in missing))


def _with(base: HostFiles, *, missing: tuple[str, ...] = (), error: str | None = None) -> HostFiles:
    return HostFiles(base.server, base.host, base.folder, base.total, missing, error)
