"""``GET /mlx-lama/stats`` and ``POST /mlx-lama/restart``: what ``mlx-lama top`` shows and does.

The stats answer is one JSON object: the gateway (address, pid, uptime,
requests and requests/s), the machine (memory, CPU), one row per manifest
model the gateway serves (state, backend, port, pid, resident memory of its
server process tree and the estimate the memory budget counts it as, the
:class:`~mlx_lama.gateway.activity.Activity` figures,
crashes, keep_alive left) and the latest requests. Log paths are included only
for clients on this machine, as ``/health`` does for log lines.

Restart asks the scheduler to drain, stop and start one server again.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mlx_lama import __version__
from mlx_lama.gateway import inference
from mlx_lama.gateway.http import ApiError, read_json
from mlx_lama.netaddr import is_loopback_host
from mlx_lama.orchestrator.slots import SchedulerError, Slot


async def stats(request: Request) -> Response:
    gateway = inference.gateway_of(request)
    local = request.client is not None and is_loopback_host(request.client.host)
    slots = sorted(gateway.scheduler.slots.items())
    servers = [_server(gateway.activity.model(name), slot, local) for name, slot in slots]
    memories = await asyncio.to_thread(resident_memories, [s["pid"] for s in servers if s["pid"]])
    for server in servers:
        server["memory_bytes"] = memories.get(server["pid"])
    body: dict[str, Any] = {
        "gateway": {
            "version": __version__,
            "pid": os.getpid(),
            "url": str(request.base_url).rstrip("/"),
            **gateway.activity.gateway(),
        },
        "system": await asyncio.to_thread(_system),
        "servers": servers,
        "recent": gateway.activity.recent(),
    }
    if local:
        body["gateway"]["manifest"] = str(gateway.manifest_path)
    return JSONResponse(body)


def _server(figures: dict[str, Any], slot: Slot, local: bool) -> dict[str, Any]:
    record = slot.record
    row: dict[str, Any] = {
        "name": slot.name,
        "backend": slot.spec.backend,
        "serve": slot.spec.serve,
        "state": "not downloaded" if slot.missing else slot.state,
        "port": record.port if record is not None else None,
        "pid": record.pid if record is not None else None,
        "in_flight": slot.refs,
        "estimate_bytes": slot.memory,  # what the memory budget counts it as
        "crashes": slot.crashes,
        "keep_alive_left": _keep_alive_left(slot),
        **figures,
    }
    if slot.error:
        row["error"] = slot.error
    if local and record is not None and record.log_path:
        row["log"] = record.log_path
    return row


def _keep_alive_left(slot: Slot) -> float | None:
    """Seconds until an idle on-demand server is stopped; None when it is not
    counting down (not loaded, busy, always served, or kept forever)."""
    if not slot.ready or slot.refs or slot.always or slot.expires_epoch is None:
        return None
    if slot.duration().forever:
        return None
    return round(max(0.0, slot.expires_epoch - time.time()), 1)


def resident_memories(pids: list[int]) -> dict[int, int | None]:
    """Resident bytes of each server's process tree (None where it cannot be read)."""
    from mlx_lama.orchestrator.observe import resident_memory

    return {pid: resident_memory(pid) for pid in pids}


def _system() -> dict[str, Any]:
    import psutil

    memory = psutil.virtual_memory()
    return {
        "memory_total": memory.total,
        "memory_used": memory.total - memory.available,
        "cpu_percent": psutil.cpu_percent(interval=None),  # since the previous call
        "cpus": psutil.cpu_count() or 1,
    }


async def restart(request: Request) -> Response:
    """``{"model": NAME}``: drain, stop and start NAME's server; answers once it is
    ready again (``{"status": "restarted"}``)."""
    gateway = inference.gateway_of(request)
    body = await read_json(request)
    route = inference.resolve(gateway, body.get("model"))
    if route.kind != "server":
        raise ApiError(400, f"model {route.name!r} is not a server mlx-lama runs")
    try:
        await gateway.scheduler.restart(route.name)
    except SchedulerError as error:
        raise ApiError(error.status, error.message) from None
    return JSONResponse({"status": "restarted", "model": route.name})
