"""Manifest rules about engines: backend names, what kind of model each engine
serves (text or embeddings), and models served across several hosts.

Part of :func:`mlx_lama.schema.checks.cross_check`: runs on the raw TOML data and
tolerates values of the wrong type. Pure: reports through a callback, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mlx_lama.backend_names import BUILTIN_BACKENDS, EMBEDDING_BACKEND, RDMA_BACKENDS
from mlx_lama.schema.checktools import Report, closest, items
from mlx_lama.schema.locate import KeyPath

# An ssh destination: [user@]host, where host is a name, an IPv4 or an IPv6 address.
# A leading "-" would reach ssh as an option, so neither part may start with one.
_SSH_HOST = re.compile(
    r"([A-Za-z0-9_][A-Za-z0-9_.-]*@)?([A-Za-z0-9][A-Za-z0-9.-]*|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*)"
)
_DISTRIBUTED_KEYS = ("distributed", "pipeline", "files", "ring_port")


def check_backends(
    models: dict[str, Any], backends: dict[str, Any], defaults: dict[str, Any], report: Report
) -> None:
    for name, section in items(backends):
        if name not in BUILTIN_BACKENDS and "type" not in section:
            report(
                ("backends", name),
                f"backend {name!r} needs a type",
                "add type = " + ", ".join(f'"{b}"' for b in BUILTIN_BACKENDS),
            )
    known = sorted({*BUILTIN_BACKENDS, *backends})

    def check(path: KeyPath, backend: object) -> None:
        if isinstance(backend, str) and backend not in known:
            guess = closest(backend, known)
            report(
                path,
                f"unknown backend {backend!r}",
                guess or f"use one of {', '.join(known)}, or define [backends.{backend}]",
            )

    check(("defaults", "backend"), defaults["backend"])
    for name, entry in items(models):
        check(("models", name, "backend"), entry.get("backend"))


def entry_backend(entry: Mapping[str, Any], defaults: Mapping[str, Any]) -> object:
    """The backend a raw model entry runs on (``Manifest.backend_of``'s rule)."""
    if "backend" in entry:
        return entry["backend"]
    if entry.get("kind") == "embedding":
        return EMBEDDING_BACKEND
    return defaults["backend"]


def check_kinds(
    models: dict[str, Any], backends: dict[str, Any], defaults: dict[str, Any], report: Report
) -> None:
    """An embedding model runs on the embedding engine (or an external server), and
    the embedding engine serves only embedding models."""
    for name, entry in items(models):
        engine = backend_type(entry_backend(entry, defaults), backends)
        if engine is None or engine == "external":
            continue
        embedding = entry.get("kind") == "embedding"
        if embedding and engine != EMBEDDING_BACKEND:
            report(
                ("models", name, "backend"),
                f"{engine} cannot serve embedding models",
                f"drop backend: embedding models run on {EMBEDDING_BACKEND}",
            )
        elif not embedding and engine == EMBEDDING_BACKEND:
            where = ("models", name, "backend") if "backend" in entry else ("models", name)
            report(
                where,
                f"{EMBEDDING_BACKEND} serves embedding models only",
                'add kind = "embedding" if it is an embedding model; else use mlx-lm or vllm-mlx',
            )


def backend_type(backend: object, backends: dict[str, Any]) -> str | None:
    """The engine type a backend name resolves to in raw manifest data, or None
    when it does not resolve (the backend checks report why)."""
    if not isinstance(backend, str):
        return None
    section = backends.get(backend)
    if isinstance(section, dict) and isinstance(section.get("type"), str):
        return str(section["type"])
    return backend if backend in BUILTIN_BACKENDS else None


# The built-in engines that can run a model over several hosts: the backends'
# ``capabilities().distributed``, written here because the schema sits beside
# backends/, not above it (tests/test_distributed.py checks that they agree).
DISTRIBUTED_ENGINES: tuple[str, ...] = ("mlx-lm",)


def check_distributed(
    models: dict[str, Any], backends: dict[str, Any], defaults: dict[str, Any], report: Report
) -> None:
    engines: tuple[str, ...] | None = None
    for name, entry in items(models):
        hosts, hostfile = entry.get("hosts"), entry.get("hostfile")
        if hosts is None and hostfile is None:
            for key in _DISTRIBUTED_KEYS:
                if key in entry:
                    report(
                        ("models", name, key),
                        f"{key} is only for a model served across several hosts",
                        'add hosts = ["mac-a", "mac-b"] or a hostfile, or remove ' + key,
                    )
            continue
        if hosts is not None and hostfile is not None:
            report(
                ("models", name, "hostfile"),
                "set either hosts or hostfile, not both",
                "hosts lists the machines; hostfile names an mlx.launch hostfile",
            )
        if isinstance(hosts, list):
            _check_hosts(name, hosts, report)
        over = entry.get("distributed")
        if over in RDMA_BACKENDS and hostfile is None:
            report(
                ("models", name, "distributed"),
                f'distributed = "{over}" needs a hostfile that names each host\'s RDMA devices',
                "write one with MLX's `mlx.distributed_config --backend jaccl` and set "
                'hostfile = "hosts.json" instead of hosts',
            )
        if "adapter" in entry:
            report(
                ("models", name, "adapter"),
                "mlx-lm cannot load an adapter when serving across hosts",
                "fuse it into the model (mlx_lm fuse) and serve that, or remove hosts",
            )
        engine = backend_type(entry_backend(entry, defaults), backends)
        if engine is None:
            continue  # the backend checks report it
        engines = engines if engines is not None else DISTRIBUTED_ENGINES
        if engine not in engines:
            report(
                ("models", name, "hosts" if hosts is not None else "hostfile"),
                f"backend {engine!r} cannot serve a model across several hosts",
                f'use backend = "{engines[0]}", or remove hosts to serve it on this machine'
                if engines
                else "remove hosts to serve it on this machine",
            )


def _check_hosts(name: str, hosts: list[Any], report: Report) -> None:
    if len(hosts) < 2:
        report(
            ("models", name, "hosts"),
            f"a distributed model needs at least two hosts (got {len(hosts)})",
            "list every machine that holds a shard, this one first; "
            "or remove hosts to serve it on this machine",
        )
    for index, host in enumerate(hosts):
        if isinstance(host, str) and not _SSH_HOST.fullmatch(host):
            report(
                ("models", name, "hosts", index),
                f"{host!r} is not a host name or address",
                'write it as ssh would, as in "mac-b", "mac-b.local", "10.0.0.2" or "me@mac-b"',
            )
