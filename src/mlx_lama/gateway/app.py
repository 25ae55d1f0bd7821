"""The gateway's starlette app: routes, error handling, lifespan.

``create_app(gateway, policy)`` builds the ASGI app ``mlx-lama serve`` runs:
the Ollama API, the OpenAI API, ``/health``, ``/metrics`` and the
``/mlx-lama/`` routes of ``mlx-lama top`` (``stats.py``), wrapped in the
request log (``requestlog.py``) and the security middleware, with requests
from another gateway noted by ``forward.HopGuard`` (the ``[remotes]`` routing
lives in ``forward.py``). One
``httpx.AsyncClient`` to the model servers (and remote gateways) is made in
the lifespan and closed there, where the scheduler's background expiry also
starts and stops. Errors are always JSON in the caller's API family with
a real status code, never a traceback or a path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from mlx_lama import __version__
from mlx_lama.gateway import agents, forward, inference, manage, stats
from mlx_lama.gateway.core import Gateway
from mlx_lama.gateway.http import INTERNAL_ERROR, ApiError, error_response, read_json
from mlx_lama.gateway.metrics import CONTENT_TYPE, LoadedModel
from mlx_lama.gateway.models import iso_time, show_response, tags_entry
from mlx_lama.gateway.proxy import CONNECT_TIMEOUT
from mlx_lama.gateway.requestlog import RequestLog
from mlx_lama.gateway.security import Listen, SecurityMiddleware, SecurityPolicy, security_policy
from mlx_lama.netaddr import is_loopback_host
from mlx_lama.orchestrator.supervisor import Supervisor
from mlx_lama.schema.manifest import Manifest, ModelEntry

log = logging.getLogger(__name__)

# The Ollama API level the gateway follows (shared/docs/ollama-api.md); clients
# compare it to decide which features to use.
OLLAMA_API_VERSION = "0.33.0"


def create_app(
    gateway: Gateway, policy: SecurityPolicy, *, stop_all_on_exit: bool = False
) -> RequestLog:
    """The gateway's ASGI app. Its lifespan runs the scheduler and the
    :class:`Supervisor`; on the way out it stops the on-demand servers (and the
    ``always`` ones too with ``stop_all_on_exit``)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # No read timeout: a long generation may pause between tokens.
        timeout = httpx.Timeout(None, connect=CONNECT_TIMEOUT)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as client:
            gateway.client = client
            gateway.scheduler.start()
            supervisor = Supervisor(gateway)
            app.state.supervisor = supervisor  # /health reads it
            supervisor.start()
            hangup = _on_hangup(supervisor.poke)
            try:
                yield
            finally:
                hangup()
                await supervisor.stop()
                await gateway.remotes.aclose()
                await gateway.spares.aclose()
                await gateway.scheduler.shutdown(stop_always=stop_all_on_exit)
                gateway.client = None

    app = Starlette(
        routes=_routes(),
        lifespan=lifespan,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
    )
    app.state.gateway = gateway
    guarded = SecurityMiddleware(forward.HopGuard(app), policy)
    gateway.on_reload.append(lambda old, new: _renew_policy(guarded, old, new))
    return RequestLog(guarded, gateway)


def _renew_policy(guarded: SecurityMiddleware, old: Manifest, new: Manifest) -> None:
    """Take a reloaded manifest's ``[server]`` api_key and origins at once. Where it
    listens cannot change while running (the socket is bound): that is logged. A key
    is never dropped while listening beyond this machine: that needs a restart."""
    policy = guarded.policy
    server = new.server
    fresh = security_policy(new, Listen(policy.bind_host, policy.port))
    if fresh.api_key is None and policy.api_key is not None and not policy.loopback_only:
        log.error(
            "api_key was removed from [server], but the gateway listens on %s: keeping "
            "the key; restart `mlx-lama serve` (with --insecure) to serve without one",
            policy.bind_host,
        )
        fresh = replace(fresh, api_key=policy.api_key)
    guarded.policy = fresh
    if (server.host, server.port) != (old.server.host, old.server.port):
        log.warning(
            "[server] host/port changed to %s:%s; the gateway keeps listening on %s:%d "
            "until `mlx-lama serve` is restarted",
            server.host,
            server.port,
            policy.bind_host,
            policy.port,
        )


def _routes() -> list[Route]:
    return [
        Route("/", _root, methods=["GET", "HEAD"]),
        Route("/api/version", _version, methods=["GET", "HEAD"]),
        Route("/api/tags", _tags, methods=["GET", "HEAD"]),
        Route("/api/ps", _ps, methods=["GET"]),
        Route("/api/show", _show, methods=["POST"]),
        Route("/api/chat", inference.ollama_chat, methods=["POST"]),
        Route("/api/generate", inference.ollama_generate, methods=["POST"]),
        Route("/api/embed", inference.ollama_embed, methods=["POST"]),
        Route("/api/embeddings", inference.ollama_embeddings, methods=["POST"]),
        Route("/api/pull", manage.pull, methods=["POST"]),
        Route("/api/delete", manage.delete, methods=["DELETE"]),
        Route("/api/copy", manage.copy, methods=["POST"]),
        Route("/api/create", manage.create, methods=["POST"]),
        Route("/api/push", _unsupported("push"), methods=["POST"]),
        Route("/v1/chat/completions", inference.openai_proxy, methods=["POST"]),
        Route("/v1/completions", inference.openai_proxy, methods=["POST"]),
        Route("/v1/embeddings", inference.openai_proxy, methods=["POST"]),
        Route("/v1/messages", agents.anthropic_messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", agents.anthropic_count_tokens, methods=["POST"]),
        Route("/v1/responses", agents.openai_responses, methods=["POST"]),
        Route("/v1/responses/{id:path}", agents.response_by_id, methods=["GET", "DELETE"]),
        Route("/v1/models", _v1_models, methods=["GET"]),
        Route("/v1/models/{model:path}", _v1_model, methods=["GET"]),
        Route("/health", _health, methods=["GET"]),
        Route("/metrics", _metrics, methods=["GET"]),
        Route("/mlx-lama/stats", stats.stats, methods=["GET"]),
        Route("/mlx-lama/restart", stats.restart, methods=["POST"]),
        Route("/mlx-lama/apply", _apply, methods=["POST"]),
    ]


def _on_hangup(callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback`` on SIGHUP (where the loop can take signals: the main
    thread, on POSIX); returns what undoes it."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, callback)
    except (ValueError, RuntimeError, NotImplementedError, AttributeError):
        return lambda: None

    def undo() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    return undo


# -- errors


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(request.url.path, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: "404 page not found", 405: "405 method not allowed"}.get(
        exc.status_code, str(exc.detail)
    )
    response = error_response(request.url.path, ApiError(exc.status_code, message))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("unexpected error on %s", request.url.path, exc_info=exc)
    return error_response(request.url.path, ApiError(500, INTERNAL_ERROR))


def _unsupported(verb: str) -> Any:
    async def endpoint(request: Request) -> Response:
        raise ApiError(
            501,
            f"/api/{verb} is not supported by mlx-lama; models come from Hugging Face repos",
        )

    return endpoint


# -- information


async def _root(request: Request) -> Response:
    return PlainTextResponse("Ollama is running")


async def _version(request: Request) -> Response:
    return JSONResponse({"version": OLLAMA_API_VERSION, "mlx_lama": __version__})


def _listed_names(gateway: Gateway) -> list[tuple[str, str]]:
    """(shown name, manifest model) for every model and every alias."""
    pairs = [(name, name) for name in gateway.manifest.models]
    for alias in gateway.manifest.aliases:
        target = gateway.alias_target(alias)
        if target is not None:
            pairs.append((alias, target))
    return pairs


async def _tags(request: Request) -> Response:
    gateway = inference.gateway_of(request)
    entries = []
    for shown, model in _listed_names(gateway):
        entry = tags_entry(shown, gateway.facts(model))
        if gateway.manifest.is_external(model):
            entry["remote_host"] = gateway.manifest.models[model].url
        entries.append(entry)
    if gateway.remotes and not forward.forwarded():
        assert gateway.client is not None
        entries += _not_local(gateway, await gateway.remotes.tags(gateway.client))
    entries.sort(key=lambda e: (str(e.get("modified_at", "")), str(e["name"])), reverse=True)
    return JSONResponse({"models": entries})


def _not_local(gateway: Gateway, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The remotes' entries whose names this manifest does not serve (local names win)."""
    return [e for e in entries if not forward.serves_locally(gateway, str(e["name"]))]


async def _ps(request: Request) -> Response:
    gateway = inference.gateway_of(request)
    rows = []
    on_gpu = sys.platform == "darwin"  # unified memory: all of it is GPU-visible
    for slot in gateway.scheduler.loaded():
        facts = gateway.facts(slot.name)
        details = tags_entry(slot.name, facts)
        expires = slot.expires_epoch if slot.expires_epoch is not None else _FOREVER
        row = {
            "name": details["name"],
            "model": details["model"],
            "size": slot.memory,
            "digest": details["digest"],
            "details": details["details"],
            "expires_at": iso_time(min(expires, _FOREVER)),
            "size_vram": slot.memory if on_gpu else 0,
        }
        context = details["details"].get("context_length")
        if context:
            row["context_length"] = context
        rows.append(row)
    if gateway.remotes and not forward.forwarded():
        assert gateway.client is not None
        rows += _not_local(gateway, await gateway.remotes.running(gateway.client))
    rows.sort(key=lambda r: str(r.get("expires_at", "")), reverse=True)
    return JSONResponse({"models": rows})


_FOREVER = 10_000_000_000.0  # 2286-11-20: Ollama shows a far-future date for "forever"


async def _show(request: Request) -> Response:
    started = time.monotonic()
    gateway = inference.gateway_of(request)
    body = await read_json(request)
    name = body.get("model") or body.get("name")
    remote = await forward.remote_for(gateway, name, explain_missing=True)
    if remote is not None:
        call = ("POST", "/api/show", body)
        return await forward.forward(gateway, remote, call, request.receive, started)
    route = inference.resolve(gateway, name)
    entry: ModelEntry = route.entry
    system = body.get("system") if isinstance(body.get("system"), str) else None
    facts = gateway.facts(route.name)
    vision = gateway.limits(route).vision
    return JSONResponse(show_response(str(name), entry, facts, vision=vision, system=system))


async def _v1_models(request: Request) -> Response:
    gateway = inference.gateway_of(request)
    data = [_v1_entry(gateway, shown, model) for shown, model in _listed_names(gateway)]
    if gateway.remotes and not forward.forwarded():
        assert gateway.client is not None
        remote = _not_local(gateway, await gateway.remotes.tags(gateway.client))
        data += [_v1_remote_entry(entry) for entry in remote]
    return JSONResponse({"object": "list", "data": data})


async def _v1_model(request: Request) -> Response:
    started = time.monotonic()
    gateway = inference.gateway_of(request)
    name = request.path_params["model"]
    remote = await forward.remote_for(gateway, name, explain_missing=True)
    if remote is not None:
        call = ("GET", request.url.path, None)
        return await forward.forward(gateway, remote, call, request.receive, started)
    route = inference.resolve(gateway, name)
    return JSONResponse(_v1_entry(gateway, name, route.name))


def _v1_entry(gateway: Gateway, shown: str, model: str) -> dict[str, Any]:
    return {
        "id": shown if ":" in shown.rsplit("/", 1)[-1] else f"{shown}:latest",
        "object": "model",
        "created": int(gateway.facts(model).modified),
        "owned_by": "mlx-lama",
    }


def _v1_remote_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """A remote's ``/api/tags`` entry (see ``remotes.marked``) as an OpenAI model object."""
    try:
        created = int(datetime.fromisoformat(str(entry.get("modified_at"))).timestamp())
    except ValueError:
        created = 0
    return {
        "id": entry["name"],
        "object": "model",
        "created": created,
        "owned_by": entry["remote_host"],
    }


# -- health and metrics


async def _health(request: Request) -> Response:
    """The gateway's own state and each served model's: ``status`` is "ok", or
    "degraded" when a server has failed or the manifest on disk is refused."""
    gateway = inference.gateway_of(request)
    local = request.client is not None and is_loopback_host(request.client.host)
    models = {}
    scheduler = gateway.scheduler
    # A model removed from the manifest stays listed ("removed") until its server stops.
    retiring = {n: s for n, s in scheduler.retiring.items() if n not in scheduler.slots}
    for name, slot in sorted({**retiring, **scheduler.slots}.items()):
        state = "not downloaded" if slot.missing else slot.shown_state
        entry: dict[str, Any] = {"state": state, "serve": slot.spec.serve, "in_flight": slot.refs}
        if name in retiring:
            entry["removed"] = True
        entry["backend"] = slot.spec.backend
        if slot.record is not None:
            entry.update(pid=slot.record.pid, port=slot.record.port)
        if slot.error:
            entry["error"] = slot.error
        if slot.failures:
            entry["failures"] = len(slot.failures)
        if slot.state == "failed" and local:  # log lines may hold paths: this machine only
            entry["log_tail"] = slot.log_tail
        models[name] = entry
    body: dict[str, Any] = {"status": "ok", "version": __version__, "pid": os.getpid()}
    supervisor: Supervisor | None = getattr(request.app.state, "supervisor", None)
    if supervisor is not None:
        body["reloads"] = supervisor.reloads
        if supervisor.plan is not None:  # what the last reload planned, as `mlx-lama plan` would
            body["last_plan"] = supervisor.plan.as_dict()
        if supervisor.applied is not None:  # the manifest in force, as sha256 of its bytes
            body["manifest_sha256"] = supervisor.applied[0]
        if supervisor.problem is not None:
            body["manifest_error"] = supervisor.problem.message
            body["manifest_error_since"] = iso_time(supervisor.problem.since)
    if "manifest_error" in body or any(m["state"] == "failed" for m in models.values()):
        body["status"] = "degraded"
    body["models"] = models
    return JSONResponse(body)


async def _apply(request: Request) -> Response:
    """Reconcile the manifest on disk now (``mlx-lama apply`` hands its server changes
    to the daemon this way): ``{"plan": ..., "reloads": N}`` once that reload (the
    daemon's Nth) is done; the servers
    it starts or stops get there in the background (``/health`` shows them). 409
    with the problem when the manifest on disk is refused."""
    supervisor: Supervisor | None = getattr(request.app.state, "supervisor", None)
    if supervisor is None:
        raise ApiError(503, "this gateway is not watching a manifest")
    plan = await supervisor.apply_now()
    if plan is None:
        problem = supervisor.problem.message if supervisor.problem else "the manifest was refused"
        raise ApiError(409, problem)
    return JSONResponse({"plan": plan.as_dict(), "reloads": supervisor.reloads})


async def _metrics(request: Request) -> Response:
    gateway = inference.gateway_of(request)
    slots = gateway.scheduler.loaded()
    pids = [s.record.pid for s in slots if s.record is not None]
    measured = await asyncio.to_thread(stats.resident_memories, pids)
    loaded = [
        LoadedModel(
            name=s.name,
            memory_bytes=s.memory,
            pinned=s.pinned,
            resident_bytes=measured.get(s.record.pid) if s.record is not None else None,
        )
        for s in slots
    ]
    text = gateway.metrics.render(
        loaded,
        memory_budget_bytes=gateway.scheduler.config.memory_budget,
        crashes={name: s.crashes for name, s in gateway.scheduler.slots.items() if s.crashes},
    )
    return Response(
        text, media_type=CONTENT_TYPE.split(";")[0], headers={"Content-Type": CONTENT_TYPE}
    )
