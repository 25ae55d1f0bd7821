"""``/api/pull``, ``/api/delete`` and ``/api/copy``: Ollama's model management as manifest edits.

- pull downloads a repo (named by a manifest model, an alias or a repo id)
  with Ollama-style progress lines, then adds the model to the manifest and
  its commit to the lock;
- delete stops the model's server, removes it (and the aliases that lead to
  it) from the manifest and the lock, and frees its files when mlx-lama
  pulled them and no other manifest model uses them; deleting an alias only
  removes the alias;
- copy adds an alias, as ``ollama cp`` adds a name for the same weights.

A name only one of the manifest's ``[remotes]`` serves is refused with a
pointer to that machine: its models are managed there, never from here.

Edits go through ``schema.editor`` (comments kept, validated, atomic, under
the apply lock); the gateway then reloads. Nothing here runs while a model
name is unvalidated.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from mlx_lama.errors import ManifestError, MlxLamaError
from mlx_lama.gateway import forward
from mlx_lama.gateway.core import Gateway
from mlx_lama.gateway.http import ApiError, read_json
from mlx_lama.gateway.inference import gateway_of
from mlx_lama.gateway.relay import NDJSON
from mlx_lama.names import check_model_name
from mlx_lama.orchestrator.entries import (
    PullSource,
    free_removed,
    pull_source,
    record_pull,
    remove_entry,
)
from mlx_lama.schema.lockfile import LockedModel

log = logging.getLogger(__name__)

T = TypeVar("T")

_PROGRESS_EVERY = 0.1  # seconds between progress lines


def _name(body: dict[str, Any], key: str = "model") -> str:
    name = body.get(key) or (body.get("name") if key == "model" else None)
    if not isinstance(name, str) or not name:
        raise ApiError(400, f"{key} is required")
    problem = check_model_name(name)
    if problem is not None:
        raise ApiError(400, f'{key} "{name}" is invalid: {problem}')
    return name


async def _not_remote(gateway: Gateway, name: str, verb: str, command: str) -> None:
    """400 when ``name`` is a model of a remote gateway rather than of this manifest."""
    remote = await forward.remote_for(gateway, name)
    if remote is not None:
        raise ApiError(
            400,
            f"model '{name}' is served by remote '{remote.remote}' at {remote.url}; "
            f"{verb} it on that machine (`mlx-lama {command}` there)",
        )


# -- pull


async def pull(request: Request) -> Response:
    gateway = gateway_of(request)
    body = await read_json(request)
    name = _name(body)
    stream = body.get("stream", True) is not False
    await _not_remote(gateway, name, "pull", "pull")
    source = _pull_source(gateway, name)
    events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def emit(event: dict[str, Any] | None) -> None:
        loop.call_soon_threadsafe(events.put_nowait, event)

    task = loop.create_task(_pull_work(gateway, source, emit))

    async def lines() -> AsyncIterator[bytes]:
        while True:
            event = await events.get()
            if event is None:
                return
            yield json.dumps(event).encode() + b"\n"

    if stream:
        return StreamingResponse(lines(), media_type=NDJSON)
    last: dict[str, Any] = {}
    async for line in lines():
        last = json.loads(line)
    await task
    if "error" in last:
        raise ApiError(500, str(last["error"]))
    return JSONResponse(last)


def _pull_source(gateway: Gateway, name: str) -> PullSource:
    try:
        return pull_source(gateway.manifest, name)
    except MlxLamaError:
        raise ApiError(404, "pull model manifest: file does not exist") from None


async def _pull_work(gateway: Gateway, source: PullSource, emit: Any) -> None:
    try:
        emit({"status": "pulling manifest"})
        if source.repo is not None:
            locked = await asyncio.to_thread(_resolve, source.repo, source.revision, source.key)
            await asyncio.to_thread(_download, gateway, locked, emit)
            emit({"status": "verifying sha256 digest"})
            emit({"status": "writing manifest"})
            await asyncio.to_thread(record_pull, gateway.manifest_path, source, locked)
            await gateway.reload()
        emit({"status": "success"})
    except ManifestError as error:  # the user's file is broken: its path stays in our log
        log.error("pull of %r could not edit the manifest: %s", source.name, error)
        emit({"error": "downloaded, but mlxlama.toml needs fixing first; see the gateway log"})
    except MlxLamaError as error:
        emit({"error": str(error)})
    except Exception:
        log.exception("pull of %r failed", source.name)
        emit({"error": "internal error; see the gateway log"})
    finally:
        emit(None)


def _resolve(repo: str, revision: str, name: str) -> LockedModel:
    from mlx_lama.orchestrator import pull

    return pull.resolve_revision(repo, revision, name=name)


def _download(gateway: Gateway, locked: LockedModel, emit: Any) -> None:
    from mlx_lama.orchestrator import pull

    digest = hashlib.sha256(f"{locked.repo}@{locked.commit}".encode()).hexdigest()
    status = f"pulling {digest[:12]}"
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < _PROGRESS_EVERY:
            return
        last[0] = now
        emit({"status": status, "digest": f"sha256:{digest}", "total": total, "completed": done})

    emit({"status": status, "digest": f"sha256:{digest}", "total": locked.size})
    pull.pull_model(locked, cache_dir=gateway.cache_dir, progress=progress, project=gateway.project)


# -- delete


async def delete(request: Request) -> Response:
    gateway = gateway_of(request)
    body = await read_json(request)
    name = _name(body)
    alias = gateway.alias_key(name)
    model = gateway.model_key(name)
    if model is None and alias is not None:
        await _edit(gateway, lambda: _remove_alias(gateway, alias), f"delete {alias!r}")
        return Response(status_code=200)
    if model is None:
        await _not_remote(gateway, name, "remove", "rm")
        raise ApiError(404, f"model '{name}' not found")
    slot = gateway.scheduler.slots.get(model)
    if slot is not None and slot.refs:
        raise ApiError(409, f"model '{name}' is answering requests; try again when it is done")
    # The reload inside _edit stops its server (it is gone from the manifest), so its
    # files can go after it.
    removed = await _edit(
        gateway, lambda: remove_entry(gateway.manifest_path, model), f"delete {model!r}"
    )
    freed = await asyncio.to_thread(
        free_removed, removed, gateway.cache_dir, project=gateway.project
    )
    kept = freed.kept_because
    if kept is None and freed.repo is not None:
        log.info("deleted %r: freed %d bytes of %s", model, freed.freed, freed.repo)
    if kept is not None:
        log.info("deleted %r; kept its files: %s", model, kept)
    # Ollama answers an empty 200; its clients read only the status, so the body
    # can say what happened to the files.
    return JSONResponse({"status": "success", **({"kept_files": kept} if kept else {})})


async def _edit(gateway: Gateway, work: Callable[[], T], what: str) -> T:
    """Run a manifest edit on a worker thread, then reload the gateway. Its refusals
    become client errors (without file paths: those stay in the gateway's log)."""
    from mlx_lama.schema.editor import ManifestEditError

    try:
        result = await asyncio.to_thread(work)
    except ManifestEditError as error:
        raise ApiError(400, str(error)) from None
    except MlxLamaError as error:
        log.error("could not %s: %s", what, error)
        message = f"could not {what}: mlxlama.toml needs fixing; see the gateway log"
        raise ApiError(500, message) from None
    await gateway.reload()
    return result


def _remove_alias(gateway: Gateway, alias: str) -> None:
    from mlx_lama.schema import editor

    editor.remove_alias(gateway.manifest_path, alias)


# -- copy


async def copy(request: Request) -> Response:
    gateway = gateway_of(request)
    body = await read_json(request)
    source = _name(body, "source")
    destination = _name(body, "destination")
    if gateway.model_key(source) is None and gateway.alias_key(source) is None:
        await _not_remote(gateway, source, "copy", "cp")
        raise ApiError(404, f'model "{source}" not found')
    if gateway.model_key(destination) is not None:
        raise ApiError(
            400,
            f'destination "{destination}" is a model in mlxlama.toml; '
            "delete it first or choose another name",
        )
    target = gateway.model_key(source) or gateway.alias_key(source)
    assert target is not None
    await _edit(gateway, lambda: _set_alias(gateway, destination, target), f"copy {source!r}")
    return Response(status_code=200)


def _set_alias(gateway: Gateway, alias: str, target: str) -> None:
    from mlx_lama.schema import editor

    editor.set_alias(gateway.manifest_path, alias, target)


# -- create

_NOT_UPLOADED = (
    "is not supported: mlx-lama does not take uploaded weights; put them in a folder "
    "or a Hugging Face repo and name it in from"
)


async def create(request: Request) -> Response:
    """Ollama's ``/api/create`` (``model``, ``from``, ``system``, ``template``,
    ``parameters``, ``messages``, ``license``): written into the manifest exactly as
    ``mlx-lama create`` writes a Modelfile, then served as the manifest says."""
    from mlx_lama.orchestrator.entries import create_entry
    from mlx_lama.schema.modelfile import ModelfileError, parse_modelfile

    gateway = gateway_of(request)
    body = await read_json(request)
    name = _name(body)
    for key in ("files", "adapters"):
        if body.get(key):
            raise ApiError(400, f"{key} {_NOT_UPLOADED}")
    if body.get("quantize"):
        raise ApiError(400, "quantize is not supported: name an already quantized MLX repo")
    base = body.get("from")
    if not isinstance(base, str) or not base:
        raise ApiError(400, "from is required: a model of the manifest, a repo id or a folder")
    text = _modelfile_text(base, body)

    def work() -> str:
        try:
            parsed = parse_modelfile(text, "/api/create")
            folder = gateway.manifest_path.absolute().parent
            return create_entry(gateway.manifest_path, name, parsed, folder)
        except ModelfileError as error:
            raise ApiError(400, str(error)) from None

    await _edit(gateway, work, f"create {name!r}")
    statuses = ["gathering model components", "writing manifest", "success"]
    if body.get("stream") is False:
        return JSONResponse({"status": "success"})
    lines = "".join(json.dumps({"status": s}) + "\n" for s in statuses)
    return Response(lines, media_type=NDJSON)


def _modelfile_text(base: str, body: dict[str, Any]) -> str:
    """The Modelfile the request stands for, so its values go through the same checks
    as a Modelfile's (parameter names and types, message roles). Each value is written
    the way ``mlx-lama show --modelfile`` writes one, so it reads back unchanged; a
    text no Modelfile can hold is a 400."""
    from mlx_lama.schema.modelfile_render import ModelfileRenderError, bare_value, quote_value

    try:
        lines = [f"FROM {bare_value(base, 'from')}"]
        for key in ("system", "template"):
            value = body.get(key)
            if value is not None:
                lines.append(f"{key.upper()} {quote_value(_string(value, key), key)}")
        licenses = body.get("license")
        for text in licenses if isinstance(licenses, list) else [licenses] if licenses else []:
            lines.append(f"LICENSE {quote_value(_string(text, 'license'), 'license')}")
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise ApiError(400, "parameters must be an object of name: value")
        for key, value in parameters.items():
            for one in value if isinstance(value, list) else [value]:
                lines.append(f"PARAMETER {key} {_parameter(one, key)}")
        messages = body.get("messages") or []
        if not isinstance(messages, list):
            raise ApiError(400, "messages must be a list of {role, content} objects")
        for message in messages:
            if not isinstance(message, dict):
                raise ApiError(400, "messages must be a list of {role, content} objects")
            role, content = message.get("role"), _string(message.get("content"), "content")
            lines.append(f"MESSAGE {role} {quote_value(content, 'messages')}")
    except ModelfileRenderError as error:
        raise ApiError(400, error.message) from None
    return "\n".join(lines) + "\n"


def _string(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise ApiError(400, f"{key} must be a string")
    return value


def _parameter(value: object, key: str) -> str:
    from mlx_lama.schema.modelfile_render import quote_value

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return quote_value(value, f"parameter {key}")
    if isinstance(value, int | float):
        return str(value)
    raise ApiError(400, f"parameter {key} must be a number, a string or true/false")
