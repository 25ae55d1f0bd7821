"""Serve one model across several machines with MLX distributed: the rank launcher.

A distributed server is started as ``python -m mlx_lama.backends.distributed ... --
COMMAND``. This launcher is the process mlx-lama records (its process group
holds every local rank, so stopping the server stops them all). It starts
rank ``i`` of COMMAND on ``hosts[i]``, directly when that host is this
machine and over ``ssh -tt`` otherwise (closing the ssh connection hangs up
the remote rank), with the variables MLX's ``mx.distributed.init()`` reads:

- ring: ``MLX_RANK`` and ``MLX_HOSTFILE``, a JSON file listing each rank's
  ``ip:port`` (what ``mlx.launch --backend ring`` writes);
- mpi: handed to ``mlx.launch --backend mpi``, which runs ``mpirun``;
- jaccl and jaccl-ring (RDMA over Thunderbolt 5): handed to ``mlx.launch``, which
  gives each rank the coordinator's address and its RDMA devices from the hostfile
  (:func:`check_rdma` checks that first, so a bad one fails before any rank starts).

Why not ``mlx.launch`` for the ring too: its I/O loop polls the ranks' stdin
pipes without pause, which keeps one CPU core busy for as long as the model
is served (measured: 107 % CPU while idle). Here the ranks write straight to
the server's log and the launcher sleeps in ``wait()``. When a rank exits,
the others are stopped and the launcher exits with the rank's status, so the
supervisor sees one crashed server and restarts the whole group.

The helpers above :func:`main` are what the backend uses to build the
launch command, and what ``ps`` uses to list the ranks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from mlx_lama.backend_names import RDMA_BACKENDS, DistributedBackend
from mlx_lama.backends.hosts import (
    LaunchProblem,
    Rank,
    check_rdma,
    is_this_machine,
    lay_out,
    read_hostfile,
)

if TYPE_CHECKING:
    from mlx_lama.backends.spec import Distribution, RunRecord

MODULE = "mlx_lama.backends.distributed"
SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "LogLevel=QUIET")
_STOP_WAIT = 10.0  # seconds the ranks get to exit after SIGTERM, then SIGKILL


# -- the launch command ---------------------------------------------------------------


def launcher_argv(
    distribution: Distribution, command: Sequence[str], env_names: Sequence[str]
) -> tuple[str, ...]:
    """``python -m mlx_lama.backends.distributed ... -- COMMAND``: how the backend starts a
    distributed server. ``env_names`` are the variables every rank gets from the
    launcher's environment (names only: values stay out of the command line)."""
    argv = [sys.executable, "-m", MODULE, "--backend", distribution.backend]
    if distribution.hostfile is not None:
        argv += ["--hostfile", str(distribution.hostfile)]
    for host in distribution.hosts:
        argv += ["--host", host]
    if distribution.ring_port is not None:
        argv += ["--ring-port", str(distribution.ring_port)]
    for name in env_names:
        argv += ["--env", name]
    return (*argv, "--", *command)


def ring_hostfile(ranks: Sequence[Rank], port: int) -> str:
    """The ``MLX_HOSTFILE`` contents for the ring: one ``[ip:port]`` list per rank."""
    return json.dumps([[_endpoint(r.ip, port + r.index)] for r in ranks])


def _endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def free_ring_port(count: int, attempts: int = 20) -> int:
    """A port P such that P .. P+count-1 are all free here (each rank listens on one)."""
    for _ in range(attempts):
        with socket.socket() as probe:
            probe.bind(("", 0))
            start = int(probe.getsockname()[1])
        if start + count <= 65535 and all(_bindable(start + i) for i in range(count)):
            return start
    raise LaunchProblem(f"found no {count} free consecutive ports for the ring")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def remote_script(rank: Rank, command: Sequence[str], env: dict[str, str], hostfile: str) -> str:
    """The shell line ssh runs for a remote rank: its environment, the ring's
    hostfile in a temporary file, then ``exec COMMAND``."""
    parts = [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    parts += [
        'MLX_HOSTFILE="$(mktemp)"',
        f'printf %s {shlex.quote(hostfile)} > "$MLX_HOSTFILE"',
        "export MLX_HOSTFILE",
        f"export MLX_RANK={rank.index}",
        f"exec {shlex.join(command)}",
    ]
    return "; ".join(parts)


# -- ps -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RankProcess:
    """A running rank as ``ps`` shows it: its host and the local pid (ssh for a remote one)."""

    index: int
    host: str
    pid: int
    via_ssh: bool


def rank_processes(record: RunRecord) -> list[RankProcess]:
    """The ranks the launcher of ``record`` runs now, in rank order (they are
    started in order, so their start order is their rank)."""
    import psutil

    hosts = record_rank_hosts(record.spec)
    try:
        children = psutil.Process(record.pid).children()
        started = sorted(children, key=lambda p: (p.create_time(), p.pid))
    except psutil.Error:
        return []
    found = []
    for index, child in enumerate(started):
        if index < len(hosts):
            host, via_ssh = hosts[index], not is_this_machine(hosts[index])
        else:
            try:
                host, via_ssh = "?", any(Path(a).name == "ssh" for a in child.cmdline()[:2])
            except psutil.Error:
                continue
        found.append(RankProcess(index, host, child.pid, via_ssh))
    return found


def record_rank_hosts(spec: dict[str, object]) -> list[str]:
    """Each rank's host from a run record's launch fields (from its hostfile if it
    has one and the file still reads; else none)."""
    distribution = spec.get("distribution")
    if not isinstance(distribution, dict):
        return []
    hostfile = distribution.get("hostfile")
    if isinstance(hostfile, str):
        try:
            return [host for host, _ips in read_hostfile(Path(hostfile))]
        except LaunchProblem:
            return []
    hosts = distribution.get("hosts")
    return [str(h) for h in hosts] if isinstance(hosts, list) else []


# -- the launcher process -----------------------------------------------------------------


class _Stop(Exception):
    """A signal asked the launcher to stop its ranks."""


class _Signals:
    """Stop signals, raised as :class:`_Stop` where they arrive, except while a rank is
    being started and recorded: a stop raised inside ``Popen`` (after the fork) or
    before the new rank is in the table would leave that rank running unstopped. There
    it waits until the rank is recorded, then is raised."""

    held = False
    pending: str | None = None


def _on_signal(signum: int, frame: object) -> None:
    name = signal.Signals(signum).name
    if _Signals.held:
        _Signals.pending = name
        return
    raise _Stop(name)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    _Signals.held = True
    try:
        yield
    finally:
        _Signals.held = False
    pending, _Signals.pending = _Signals.pending, None
    if pending is not None:
        raise _Stop(pending)


def _say(text: str) -> None:
    print(f"[mlx-lama] {text}", file=sys.stderr, flush=True)


def _spawn_rank(
    rank: Rank, command: Sequence[str], env: dict[str, str], hostfile: str, hostfile_path: Path
) -> subprocess.Popen[bytes]:
    if rank.local:
        rank_env = {**os.environ, "MLX_RANK": str(rank.index), "MLX_HOSTFILE": str(hostfile_path)}
        return subprocess.Popen(list(command), stdin=subprocess.DEVNULL, env=rank_env)
    script = remote_script(rank, command, env, hostfile)
    # -tt: the remote rank gets a terminal, so it is hung up when this connection closes.
    # stdin stays an open pipe: at end of input ssh would close the remote terminal.
    return subprocess.Popen(["ssh", "-tt", *SSH_OPTIONS, rank.host, script], stdin=subprocess.PIPE)


def _stop_all(procs: dict[int, tuple[Rank, subprocess.Popen[bytes]]]) -> None:
    for _, proc in procs.values():
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + _STOP_WAIT
    for _, proc in procs.values():
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _run_ring(args: argparse.Namespace, command: list[str]) -> int:
    ranks = lay_out(args.host, Path(args.hostfile) if args.hostfile else None)
    port = args.ring_port or free_ring_port(len(ranks))
    hostfile = ring_hostfile(ranks, port)
    env = {name: os.environ[name] for name in args.env if name in os.environ}
    with tempfile.TemporaryDirectory(prefix="mlx-lama-ring-") as folder:
        hostfile_path = Path(folder) / "hostfile.json"
        hostfile_path.write_text(hostfile, encoding="utf-8")
        procs: dict[int, tuple[Rank, subprocess.Popen[bytes]]] = {}
        try:
            for rank in ranks:
                with _signals_held():
                    try:
                        proc = _spawn_rank(rank, command, env, hostfile, hostfile_path)
                    except OSError as exc:
                        problem = f"cannot start rank {rank.index} on {rank.host}: {exc}"
                        raise LaunchProblem(problem) from None
                    procs[proc.pid] = (rank, proc)
                where = "here" if rank.local else "over ssh"
                _say(f"rank {rank.index} on {rank.host} ({where}): pid {proc.pid}")
            _say(f"ring on ports {port}-{port + len(ranks) - 1}")
            while True:
                pid, status = os.wait()
                if pid in procs:
                    break
            rank, _ = procs.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            _say(f"rank {rank.index} on {rank.host} ended ({_how(code)}); stopping the others")
            return code if code > 0 else 1
        except _Stop as stop:
            _say(f"{stop}: stopping {len(procs)} ranks")
            return 0
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            _stop_all(procs)


def _how(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def mlx_launch_command(args: argparse.Namespace, command: list[str]) -> list[str]:
    """``mlx.launch --backend mpi|jaccl|jaccl-ring``: for mpi it writes mpirun's
    hostfile and finds libmpi; for jaccl it hands each rank its RDMA devices."""
    mlx_launch = [sys.executable, "-c", "from mlx._distributed_utils.launch import main; main()"]
    hosts = ["--hostfile", args.hostfile] if args.hostfile else ["--hosts", ",".join(args.host)]
    env = [f"--env={name}={os.environ[name]}" for name in args.env if name in os.environ]
    return [*mlx_launch, "--backend", args.backend, *hosts, *env, "--", *command]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Run COMMAND as the ranks of an MLX distributed job (mlx-lama starts this).",
    )
    parser.add_argument("--backend", choices=get_args(DistributedBackend), default="ring")
    parser.add_argument("--host", action="append", default=[], help="rank i's ssh destination")
    parser.add_argument("--hostfile", help="an mlx.launch JSON hostfile instead of --host")
    parser.add_argument("--ring-port", type=int, help="first ring port (default: a free one)")
    parser.add_argument("--env", action="append", default=[], help="a variable to pass on")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (put it after --)")
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    try:
        if args.backend == "mpi":
            if shutil.which("mpirun") is None:
                raise LaunchProblem("mpirun is not on PATH: install Open MPI on every host")
            os.execvp(sys.executable, mlx_launch_command(args, command))
        if args.backend in RDMA_BACKENDS:
            if not args.hostfile:
                raise LaunchProblem(f"--backend {args.backend} needs --hostfile")
            check_rdma(Path(args.hostfile), args.backend)
            os.execvp(sys.executable, mlx_launch_command(args, command))
        return _run_ring(args, command)
    except LaunchProblem as problem:
        _say(f"error: {problem}")
        return 2
    except _Stop:
        return 0


if __name__ == "__main__":
    sys.exit(main())
