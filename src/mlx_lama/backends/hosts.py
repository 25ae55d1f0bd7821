"""Where the ranks of a model served across several machines run: hosts, hostfiles.

Which destination is this machine (rank 0 must be: it answers the gateway), the
ranks laid out from ``hosts`` or an mlx.launch JSON hostfile, with the address
each is reached at, and whether a hostfile is fit for jaccl (RDMA over
Thunderbolt 5). Used by the launcher (``distributed.py``), by mlx-lm's launch
command, and by the orchestrator's host checks. Resolves names; starts nothing.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


class LaunchProblem(Exception):
    """The ranks cannot be laid out (bad hostfile, unresolvable host, ...)."""


def ssh_host(destination: str) -> str:
    """The host part of an ssh destination ``[user@]host``."""
    return destination.rpartition("@")[2]


def is_this_machine(destination: str) -> bool:
    """``destination`` names this machine: a loopback name or address, this
    machine's host name, or an address of one of its network interfaces."""
    host = ssh_host(destination).strip("[]").lower()
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        name = socket.gethostname().lower()
        return host in (name, name.split(".")[0], name.split(".")[0] + ".local")
    return address.is_loopback or str(address) in _local_addresses()


def _local_addresses() -> set[str]:
    import psutil

    return {
        a.address.split("%")[0]
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family in (socket.AF_INET, socket.AF_INET6)
    }


@dataclass(frozen=True, slots=True)
class Rank:
    """One rank: where it runs (an ssh destination) and the address the ring uses."""

    index: int
    host: str
    ip: str  # the address the ring connects to
    local: bool


def read_hostfile(path: Path) -> list[tuple[str, list[str]]]:
    """(ssh destination, ips) per rank from an mlx.launch JSON hostfile: a list
    of ``{"ssh": ..., "ips": [...]}``, or ``{"hosts": [...]}`` around one."""
    ranks = []
    for index, host in enumerate(_hostfile_entries(path)):
        ips = host.get("ips") or []
        if not isinstance(ips, list) or not all(isinstance(ip, str) for ip in ips):
            raise LaunchProblem(f'hostfile {path}: "ips" of host {index} must be a list of strings')
        ranks.append((str(host["ssh"]), list(ips)))
    return ranks


def _hostfile_entries(path: Path) -> list[dict[str, object]]:
    """The host objects of the hostfile at ``path``, each with an ``ssh`` name."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise LaunchProblem(f"cannot read hostfile {path}: {exc}") from None
    except ValueError as exc:
        raise LaunchProblem(f"hostfile {path} is not JSON: {exc}") from None
    hosts = data.get("hosts") if isinstance(data, dict) else data
    if not isinstance(hosts, list) or len(hosts) < 2:
        raise LaunchProblem(
            f'hostfile {path} must list at least two hosts, as in [{{"ssh": "mac-a"}}, ...]'
        )
    for index, host in enumerate(hosts):
        if not isinstance(host, dict) or not isinstance(host.get("ssh"), str):
            raise LaunchProblem(f'hostfile {path}: host {index} has no "ssh" name')
    return hosts


def check_rdma(path: Path, backend: str) -> None:
    """Refuse a hostfile that ``mlx.launch --backend jaccl`` (or ``jaccl-ring``) cannot
    use: each host's ``rdma`` lists one device per host, null for itself and a name
    for every host it talks to (all of them; for jaccl-ring, its two neighbours), and
    rank 0, the coordinator, is this machine and has an address the others reach."""
    listed = read_hostfile(path)
    hosts = _hostfile_entries(path)
    count = len(listed)
    first, first_ips = listed[0]
    if not is_this_machine(first):
        raise LaunchProblem(
            f"hostfile {path}: the first host ({first}) runs rank 0, which answers the "
            "gateway, so it must be this machine"
        )
    if not first_ips:
        raise LaunchProblem(
            f'hostfile {path}: host 0 needs "ips", the address the other hosts reach it at'
        )
    for index, host in enumerate(hosts):
        devices = host.get("rdma")
        if not isinstance(devices, list) or len(devices) != count:
            raise LaunchProblem(
                f'hostfile {path}: host {index} needs "rdma", a list of {count} devices '
                "(one per host, null for itself)"
            )
        if devices[index] is not None:
            raise LaunchProblem(f'hostfile {path}: "rdma" of host {index} must be null at {index}')
        peers = {(index - 1) % count, (index + 1) % count} if backend == "jaccl-ring" else None
        for other, device in enumerate(devices):
            wanted = other != index and (peers is None or other in peers)
            if wanted and not (isinstance(device, str) and device):
                raise LaunchProblem(
                    f'hostfile {path}: "rdma" of host {index} names no device for host '
                    f"{other} ({listed[other][0]})"
                )


def lay_out(hosts: Sequence[str], hostfile: Path | None) -> list[Rank]:
    """The ranks, in order, with their ring addresses (a hostfile's, or resolved).

    Rank 0 serves HTTP to the gateway, so it must be this machine. A ring that
    spans machines cannot use loopback addresses: the other hosts could not
    reach them.
    """
    listed = read_hostfile(hostfile) if hostfile is not None else [(h, []) for h in hosts]
    if not listed or not is_this_machine(listed[0][0]):
        raise LaunchProblem(
            f"the first host ({listed[0][0] if listed else 'none'}) runs rank 0, which "
            "answers the gateway, so it must be this machine: list this machine first"
        )
    ranks = []
    for index, (host, ips) in enumerate(listed):
        ip = ips[0] if ips else _resolve(host)
        ranks.append(Rank(index, host, ip, is_this_machine(host)))
    if not all(r.local for r in ranks):
        loopback = [r for r in ranks if _is_loopback(r.ip)]
        if loopback:
            raise LaunchProblem(
                f"{loopback[0].host} is a loopback address, which the other hosts cannot "
                "reach: name this machine by its network address or host name"
            )
    return ranks


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def _resolve(destination: str) -> str:
    host = ssh_host(destination).strip("[]")
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise LaunchProblem(f"cannot resolve host {host!r}: {exc}") from None
    ipv4 = [i[4][0] for i in infos if i[0] == socket.AF_INET]
    return str(ipv4[0] if ipv4 else infos[0][4][0])
