"""Manifest rules that span entries: names, ports, aliases, sources, externals,
exposure and remotes (the rules about engines live in ``engine_checks.py``).

Run by the loader on the raw TOML data, after and regardless of the schema
check, so one read reports every problem. Tolerates values of the wrong type
(the schema reports those). Pure: reports through a callback, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from mlx_lama.backend_names import (
    DEFAULT_BACKEND,
)
from mlx_lama.names import canonical_name, check_model_name, is_repo_id
from mlx_lama.netaddr import is_loopback_host, url_port
from mlx_lama.schema.checktools import Report, closest, items, tables
from mlx_lama.schema.constraints import server_url
from mlx_lama.schema.engine_checks import (
    backend_type,
    check_backends,
    check_distributed,
    check_kinds,
    entry_backend,
)
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


def cross_check(
    data: dict[str, Any], report: Report, default_backend: str = DEFAULT_BACKEND
) -> None:
    """Rules that span entries. Runs on the raw TOML data, so it reports even
    when the schema check failed, and tolerates values of the wrong type.
    ``default_backend`` is the backend of models that neither their entry nor
    ``[defaults]`` give one (the user's ``default_backend``, when set)."""
    models = tables(data, "models")
    backends = tables(data, "backends")
    server = tables(data, "server")
    defaults = {"backend": default_backend, **tables(data, "defaults")}
    model_keys = _check_names(
        "models", models, "model", 'model names look like "name:tag" or "org/repo"', report
    )
    check_backends(models, backends, defaults, report)
    check_kinds(models, backends, defaults, report)
    external = {
        name
        for name, entry in items(models)
        if backend_type(entry_backend(entry, defaults), backends) == "external"
    }
    _check_externals(models, backends, server, external, report)
    _check_sources({k: v for k, v in models.items() if k not in external}, report)
    _check_ports({k: v for k, v in models.items() if k not in external}, server, report)
    _check_aliases(tables(data, "aliases"), model_keys, report)
    _check_exposure(server, report)
    check_distributed(models, backends, defaults, report)
    _check_remotes(tables(data, "remotes"), model_keys, server, report)


def _check_names(
    section: str, names: Iterable[str], what: str, hint: str, report: Report
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


def _check_externals(
    models: dict[str, Any],
    backends: dict[str, Any],
    server: dict[str, Any],
    external: set[str],
    report: Report,
) -> None:
    for name, section in items(backends):
        if section.get("type", name) != "external":
            continue
        for key in ("args", "env"):
            if key in section:
                report(
                    ("backends", name, key),
                    f"{key} does not apply to an external backend",
                    _NOT_FOR_EXTERNAL[key],
                )
    for name, entry in items(models):
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


def _check_gateway_loop(path: KeyPath, url: object, server: dict[str, Any], report: Report) -> None:
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


def _check_sources(models: dict[str, Any], report: Report) -> None:
    for name, entry in items(models):
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


def _check_ports(models: dict[str, Any], server: dict[str, Any], report: Report) -> None:
    gateway = server.get("port", 11434)
    owners: dict[int, str] = {}
    for name, entry in items(models):
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


def _check_aliases(aliases: dict[str, Any], models: dict[str, str], report: Report) -> None:
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


def _check_exposure(server: dict[str, Any], report: Report) -> None:
    host = server.get("host")
    if not isinstance(host, str) or is_loopback_host(host) or server.get("api_key"):
        return
    report(
        ("server", "host"),
        f"host {host!r} exposes the gateway beyond this machine without an api_key",
        'set api_key under [server], or bind host = "127.0.0.1"',
    )


_REMOTE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def _check_remotes(
    remotes: dict[str, Any], models: dict[str, str], server: dict[str, Any], report: Report
) -> None:
    owners: dict[str, str] = {}
    for remote, section in items(remotes):
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
