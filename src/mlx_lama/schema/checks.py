"""Manifest rules that span entries: names, ports, aliases, backends, sources, externals.

Run by the loader on the raw TOML data, after and regardless of the schema
check, so one read reports every problem. Tolerates values of the wrong type
(the schema reports those). Pure: reports through a callback, no I/O.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from mlx_lama.backend_names import BUILTIN_BACKENDS, DEFAULT_BACKEND
from mlx_lama.names import canonical_name, check_model_name, is_repo_id
from mlx_lama.netaddr import is_loopback_host, url_port
from mlx_lama.schema.constraints import server_url
from mlx_lama.schema.locate import KeyPath, render_key_path

# Keys that configure files or a process mlx-lama runs; an external model has neither.
_NOT_FOR_EXTERNAL = {
    "repo": "the server at url provides the model; remove repo",
    "path": "the server at url provides the model; remove path",
    "revision": "the server at url decides which revision it serves; remove revision",
    "port": "the port is part of url; remove port",
    "args": "mlx-lama does not start external servers; pass flags to the server yourself",
    "env": "mlx-lama does not start external servers; set its environment yourself",
    "adapter": "load the adapter in the external server itself; remove adapter",
}


def closest(word: object, options: list[str] | tuple[str, ...]) -> str | None:
    """A "did you mean" hint for ``word`` among ``options``, if one is close."""
    if not isinstance(word, str):
        return None
    matches = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"did you mean {matches[0]!r}?" if matches else None


class _Report(typing.Protocol):
    def __call__(self, path: KeyPath, message: str, hint: str | None = None) -> None: ...


def _tables(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _items(table: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, entry in table.items():
        yield name, entry if isinstance(entry, dict) else {}


def cross_check(
    data: dict[str, Any], report: _Report, default_backend: str = DEFAULT_BACKEND
) -> None:
    """Rules that span entries. Runs on the raw TOML data, so it reports even
    when the schema check failed, and tolerates values of the wrong type.
    ``default_backend`` is the backend of models that neither their entry nor
    ``[defaults]`` give one (the user's ``default_backend``, when set)."""
    models = _tables(data, "models")
    backends = _tables(data, "backends")
    server = _tables(data, "server")
    defaults = {"backend": default_backend, **_tables(data, "defaults")}
    model_keys = _check_names(
        "models", models, "model", 'model names look like "name:tag" or "org/repo"', report
    )
    _check_backends(models, backends, defaults, report)
    external = {
        name
        for name, entry in _items(models)
        if backend_type(entry.get("backend", defaults["backend"]), backends) == "external"
    }
    _check_externals(models, backends, server, external, report)
    _check_sources({k: v for k, v in models.items() if k not in external}, report)
    _check_ports({k: v for k, v in models.items() if k not in external}, server, report)
    _check_aliases(_tables(data, "aliases"), model_keys, report)
    _check_exposure(server, report)
    _check_distributed(models, backends, defaults, report)
    _check_remotes(_tables(data, "remotes"), model_keys, server, report)


def _check_names(
    section: str, names: Iterable[str], what: str, hint: str, report: _Report
) -> dict[str, str]:
    """Report invalid names and names that clash once case and ``:latest`` are
    ignored; return canonical name -> name for the valid ones."""
    seen: dict[str, str] = {}
    for name in names:
        problem = check_model_name(name)
        if problem:
            report((section, name), problem, hint)
            continue
        key = canonical_name(name)
        if key in seen:
            report(
                (section, name),
                f"{name!r} names the same {what} as {seen[key]!r}",
                "names are case-insensitive and ':latest' is implied; keep one entry",
            )
        else:
            seen[key] = name
    return seen


def _check_backends(
    models: dict[str, Any], backends: dict[str, Any], defaults: dict[str, Any], report: _Report
) -> None:
    for name, section in _items(backends):
        if name not in BUILTIN_BACKENDS and "type" not in section:
            report(
                ("backends", name),
                f"backend {name!r} needs a type",
                'add type = "mlx-lm", "vllm-mlx" or "external"',
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
    for name, entry in _items(models):
        check(("models", name, "backend"), entry.get("backend"))


def backend_type(backend: object, backends: dict[str, Any]) -> str | None:
    """The engine type a backend name resolves to in raw manifest data, or None
    when it does not resolve (the backend checks report why)."""
    if not isinstance(backend, str):
        return None
    section = backends.get(backend)
    if isinstance(section, dict) and isinstance(section.get("type"), str):
        return str(section["type"])
    return backend if backend in BUILTIN_BACKENDS else None


def _check_externals(
    models: dict[str, Any],
    backends: dict[str, Any],
    server: dict[str, Any],
    external: set[str],
    report: _Report,
) -> None:
    for name, section in _items(backends):
        if section.get("type", name) != "external":
            continue
        for key in ("args", "env"):
            if key in section:
                report(
                    ("backends", name, key),
                    f"{key} does not apply to an external backend",
                    _NOT_FOR_EXTERNAL[key],
                )
    for name, entry in _items(models):
        if name not in external:
            if "url" in entry:
                report(
                    ("models", name, "url"),
                    "url is only for external models",
                    'set backend = "external" to route to the server at url, or remove url',
                )
            continue
        if "url" not in entry:
            report(
                ("models", name),
                "an external model needs a url",
                'add the address of the running server, as in url = "http://127.0.0.1:1234"',
            )
        else:
            _check_gateway_loop(("models", name, "url"), entry["url"], server, report)
        for key, hint in _NOT_FOR_EXTERNAL.items():
            if key in entry:
                report(("models", name, key), f"{key} does not apply to an external model", hint)


def _check_gateway_loop(
    path: KeyPath, url: object, server: dict[str, Any], report: _Report
) -> None:
    if not isinstance(url, str):
        return
    try:
        normalized = server_url(url)
        host, port = urlsplit(normalized).hostname, url_port(normalized)
    except ValueError:
        return  # the schema reports a bad url
    gateway = server.get("port", 11434)
    if port == gateway and is_loopback_host(host or ""):
        report(
            path,
            f"url {url!r} is mlx-lama's own gateway ([server] port {gateway})",
            "point url at the other server's port, or move the gateway with [server] port",
        )


def _check_sources(models: dict[str, Any], report: _Report) -> None:
    for name, entry in _items(models):
        has_repo, has_path = "repo" in entry, "path" in entry
        if has_repo and has_path:
            report(
                ("models", name, "path"),
                "set either repo or path, not both",
                "repo downloads from Hugging Face; path uses a local folder",
            )
        elif not has_repo and not has_path:
            report(
                ("models", name),
                "no repo or path",
                'add repo = "org/name" (a Hugging Face repo) or path = "./folder"',
            )
        repo = entry.get("repo")
        if isinstance(repo, str) and not is_repo_id(repo):
            report(
                ("models", name, "repo"),
                f"{repo!r} is not a Hugging Face repo id",
                'write it as "org/name", as in "mlx-community/Qwen3-4B-4bit"',
            )


def _check_ports(models: dict[str, Any], server: dict[str, Any], report: _Report) -> None:
    gateway = server.get("port", 11434)
    owners: dict[int, str] = {}
    for name, entry in _items(models):
        port = entry.get("port")
        if not isinstance(port, int) or isinstance(port, bool):
            continue
        if port == gateway:
            report(
                ("models", name, "port"),
                f"port {port} is the gateway's port ([server] port)",
                "pick another port, or leave port out to have one assigned",
            )
        elif port in owners:
            report(
                ("models", name, "port"),
                f"port {port} is already used by models.{render_key_path((owners[port],))}",
                "every served model needs its own port; leave port out to have one assigned",
            )
        else:
            owners[port] = name


def _check_aliases(aliases: dict[str, Any], models: dict[str, str], report: _Report) -> None:
    hint = 'alias names look like "name" or "name:tag"'
    alias_keys = _check_names("aliases", aliases, "alias", hint, report)
    for key, alias in alias_keys.items():
        if key in models:
            report(
                ("aliases", alias),
                f"alias {alias!r} has the same name as model {models[key]!r}",
                "rename the alias, or drop it and use the model's name",
            )

    edges: dict[str, str] = {}
    for alias, target in aliases.items():
        if not isinstance(target, str) or check_model_name(alias):
            continue
        problem = check_model_name(target)
        if problem:
            report(("aliases", alias), problem)
            continue
        target_key = canonical_name(target)
        if target_key in alias_keys:
            edges[canonical_name(alias)] = target_key
        elif target_key not in models:
            guess = closest(target, list(models.values()))
            report(
                ("aliases", alias),
                f"alias target {target!r} is not a model in this manifest",
                guess or f'add [models."{target}"] or point the alias at an existing model',
            )

    reported: set[str] = set()
    for start, first in edges.items():
        chain, node = [start], first
        while node in edges and node not in chain:
            chain.append(node)
            node = edges[node]
        if node in chain and node not in reported:
            loop = chain[chain.index(node) :]
            reported.update(loop)
            names = [alias_keys[k] for k in loop] + [alias_keys[node]]
            report(
                ("aliases", alias_keys[node]),
                "alias loop: " + " -> ".join(names),
                "point one of these aliases at a model",
            )


def _check_exposure(server: dict[str, Any], report: _Report) -> None:
    host = server.get("host")
    if not isinstance(host, str) or is_loopback_host(host) or server.get("api_key"):
        return
    report(
        ("server", "host"),
        f"host {host!r} exposes the gateway beyond this machine without an api_key",
        'set api_key under [server], or bind host = "127.0.0.1"',
    )


# An ssh destination: [user@]host, where host is a name, an IPv4 or an IPv6 address.
# A leading "-" would reach ssh as an option, so neither part may start with one.
_SSH_HOST = re.compile(
    r"([A-Za-z0-9_][A-Za-z0-9_.-]*@)?([A-Za-z0-9][A-Za-z0-9.-]*|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*)"
)
_DISTRIBUTED_KEYS = ("distributed", "pipeline", "files", "ring_port")
_REMOTE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


# The built-in engines that can run a model over several hosts: the backends'
# ``capabilities().distributed``, written here because the schema sits beside
# backends/, not above it (tests/test_distributed.py checks that they agree).
DISTRIBUTED_ENGINES: tuple[str, ...] = ("mlx-lm",)


def _check_distributed(
    models: dict[str, Any], backends: dict[str, Any], defaults: dict[str, Any], report: _Report
) -> None:
    engines: tuple[str, ...] | None = None
    for name, entry in _items(models):
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
        if "adapter" in entry:
            report(
                ("models", name, "adapter"),
                "mlx-lm cannot load an adapter when serving across hosts",
                "fuse it into the model (mlx_lm fuse) and serve that, or remove hosts",
            )
        engine = backend_type(entry.get("backend", defaults["backend"]), backends)
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


def _check_hosts(name: str, hosts: list[Any], report: _Report) -> None:
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


def _check_remotes(
    remotes: dict[str, Any], models: dict[str, str], server: dict[str, Any], report: _Report
) -> None:
    owners: dict[str, str] = {}
    for remote, section in _items(remotes):
        if not _REMOTE_NAME.fullmatch(remote):
            report(
                ("remotes", remote),
                f"{remote!r} is not a valid remote name",
                "use letters, digits, '_', '.' and '-', as in [remotes.studio]",
            )
        url = section.get("url")
        if isinstance(url, str):
            _check_gateway_loop(("remotes", remote, "url"), url, server, report)
        listed = section.get("models")
        if not isinstance(listed, list):
            continue
        for index, model in enumerate(listed):
            if not isinstance(model, str):
                continue
            problem = check_model_name(model)
            if problem:
                report(("remotes", remote, "models", index), problem)
                continue
            key = canonical_name(model)
            if key in models:
                report(
                    ("remotes", remote, "models", index),
                    f"{model!r} is also a model of this manifest ([models.{models[key]}])",
                    "a name is served by one place: remove it here or from [models]",
                )
            elif key in owners and owners[key] != remote:
                report(
                    ("remotes", remote, "models", index),
                    f"{model!r} is already routed to remote {owners[key]!r}",
                    "list each model under one remote",
                )
            owners.setdefault(key, remote)
