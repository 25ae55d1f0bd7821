"""Other gateways whose models ours serves too: the manifest's ``[remotes.NAME]``.

:class:`RemoteSet` knows which remote serves which model name. A remote with a
``models`` list serves exactly those names, known without asking it; one
without serves whatever its ``GET /api/tags`` lists. That listing is fetched
with the remote's key and kept for ``LIST_TTL`` seconds, and fetched again
when a request names a model nobody knows, so a model just added over there
is found at once. The routes merge the remotes' models into ``/api/tags`` and
``/api/ps``, marked with Ollama's own ``remote_model`` and ``remote_host``.

A remote that does not answer costs one short wait (``LIST_TIMEOUT``); after
that its listing is fetched in the background, and lookups leave it alone for
``RETRY_AFTER`` seconds, until it answers again. The gateway reconfigures the
set on every reload. Forwarding the requests themselves is ``forward.py``'s
job; nothing here decides about the manifest's own models.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from mlx_lama.names import canonical_name, check_model_name
from mlx_lama.schema.manifest import RemoteSection

log = logging.getLogger(__name__)

JsonObject = dict[str, Any]

LIST_TIMEOUT = 2.0  # seconds for a remote's /api/tags or /api/ps; a gateway on a LAN answers in ms
LIST_TTL = 5.0  # seconds a listing is reused for /api/tags before it is fetched again
RETRY_AFTER = 5.0  # seconds a lookup leaves a remote alone after it failed to answer
# Sent on every request to a remote: the remote answers it from its own models only,
# so two gateways that list each other never pass a request back and forth.
FORWARDED_HEADER = "X-Mlx-Lama-Forwarded"


@dataclass(frozen=True, slots=True)
class RemoteModel:
    """A model another gateway serves: where to send requests for it."""

    remote: str  # the NAME of [remotes.NAME]
    url: str  # the remote gateway's root
    api_key: str | None
    name: str  # the model's name there, as its listing (or our `models` list) spells it

    def headers(self) -> dict[str, str]:
        return remote_headers(self.url, self.api_key)


def remote_headers(url: str, api_key: str | None) -> dict[str, str]:
    """The headers of every request to a remote: its key, and the forwarding mark. Pure."""
    headers = {FORWARDED_HEADER: "1"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def listed_models(body: object) -> dict[str, JsonObject]:
    """A ``/api/tags`` (or ``/api/ps``) body's models by comparison key, first one of a
    name kept; entries without a valid name are dropped. Pure."""
    models = body.get("models") if isinstance(body, dict) else None
    found: dict[str, JsonObject] = {}
    for item in models if isinstance(models, list) else ():
        if not isinstance(item, dict):
            continue
        name = item.get("model") or item.get("name")
        if isinstance(name, str) and check_model_name(name) is None:
            found.setdefault(canonical_name(name), item)
    return found


def routed(
    section: RemoteSection, models: Mapping[str, JsonObject]
) -> list[tuple[str, JsonObject]]:
    """The entries of a remote's listing (by comparison key) ours routes to it: all of
    them, or only those its ``models`` list names. Pure."""
    wanted = {canonical_name(m) for m in section.models}
    return [(key, entry) for key, entry in models.items() if not wanted or key in wanted]


def marked(entry: Mapping[str, Any], url: str) -> JsonObject:
    """``entry`` of a remote's listing as ours shows it: same name, with Ollama's
    ``remote_model`` (its name there) and ``remote_host`` (the remote's root). Pure."""
    shown = dict(entry)
    name = str(entry.get("model") or entry.get("name"))
    shown.setdefault("name", name)
    shown.setdefault("model", name)
    shown["remote_model"] = name
    shown["remote_host"] = url
    return shown


def failure_detail(error: Exception) -> str:
    """Why a remote did not answer, in a few words (no traceback). Pure."""
    if isinstance(error, httpx.TimeoutException):
        return f"no answer within {LIST_TIMEOUT:g} s"
    if isinstance(error, httpx.ConnectError):
        return connect_failure(error)
    if isinstance(error, httpx.HTTPStatusError):
        status = error.response.status_code
        if status in (401, 403):
            return f"HTTP {status}: it wants an api_key (set the key of its [server])"
        return f"HTTP {status} on {error.request.url.path}"
    if isinstance(error, ValueError):
        return "its /api/tags is not a model list"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def connect_failure(error: BaseException) -> str:
    """Why a connection could not be made: the cause under httpx's and anyio's
    wrappers ("All connection attempts failed"). Pure."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return f"unknown host ({cause.strerror})"
        cause = cause.__cause__ or cause.__context__
    return f"cannot connect ({error})"


@dataclass(slots=True)
class _Listing:
    """What one remote's /api/tags said last."""

    models: dict[str, JsonObject] = field(default_factory=dict)  # from the last good fetch
    answered: bool | None = None  # the last fetch's outcome; None before the first
    error: str = ""  # why the last fetch failed
    fetched: float = -math.inf  # monotonic time the last fetch ended
    task: asyncio.Task[None] | None = None  # the fetch in flight, shared by all who wait


@dataclass(frozen=True, slots=True)
class Unanswered:
    """A remote whose last listing fetch failed."""

    remote: str
    url: str
    detail: str


class RemoteSet:
    """The manifest's remotes and what each lists; see the module docstring."""

    def __init__(self) -> None:
        self.sections: dict[str, RemoteSection] = {}
        self._listings: dict[str, _Listing] = {}
        self._named: dict[str, RemoteModel] = {}  # comparison key -> remote, from `models` lists

    def __bool__(self) -> bool:
        return bool(self.sections)

    def configure(self, sections: Mapping[str, RemoteSection]) -> None:
        """Take the remotes of a (re)loaded manifest. A remote whose url and key are
        unchanged keeps its listing; the others start afresh."""
        previous, listings = self.sections, self._listings
        self.sections = dict(sections)
        self._listings = {}
        for name, section in self.sections.items():
            old = previous.get(name)
            same = old is not None and (old.url, old.api_key) == (section.url, section.api_key)
            kept = listings.pop(name, None) if same else None
            self._listings[name] = kept if kept is not None else _Listing()
        for dropped in listings.values():
            if dropped.task is not None:
                dropped.task.cancel()
        self._named = {}
        for name, section in self.sections.items():
            for model in section.models:
                remote = RemoteModel(name, section.url, section.api_key, model)
                self._named.setdefault(canonical_name(model), remote)

    async def aclose(self) -> None:
        """Cancel the fetches in flight (the gateway is stopping)."""
        tasks = [t for t in (x.task for x in self._listings.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- which remote serves a name

    async def find(self, client: httpx.AsyncClient, name: str) -> RemoteModel | None:
        """The remote that serves ``name`` (a valid model name), or None. A name no
        listing has sends every remote without a ``models`` list a fresh fetch
        (except those that failed within ``RETRY_AFTER``), then looks again."""
        key = canonical_name(name)
        found = self._lookup(key)
        if found is not None:
            return found
        now = time.monotonic()
        due = [
            remote
            for remote, listing in self._listings.items()
            if not self.sections[remote].models
            and not (listing.answered is False and now - listing.fetched < RETRY_AFTER)
        ]
        await self._wait(self._refresh(client, remote) for remote in due)
        return self._lookup(key)

    def _lookup(self, key: str) -> RemoteModel | None:
        named = self._named.get(key)
        if named is not None:
            return named
        for remote, listing in self._listings.items():
            section = self.sections[remote]
            entry = None if section.models else listing.models.get(key)
            if entry is not None:
                name = str(entry.get("model") or entry.get("name"))
                return RemoteModel(remote, section.url, section.api_key, name)
        return None

    def unanswered(self) -> list[Unanswered]:
        """The remotes without a ``models`` list whose last fetch failed: a name
        not found may be one of theirs."""
        return [
            Unanswered(remote, self.sections[remote].url, listing.error)
            for remote, listing in self._listings.items()
            if listing.answered is False and not self.sections[remote].models
        ]

    # -- what the remotes have, for /api/tags and /api/ps

    async def tags(self, client: httpx.AsyncClient) -> list[JsonObject]:
        """Every remote's models (only those of its ``models`` list, when it has
        one), marked, first remote first for a name two list. Listings older than
        ``LIST_TTL`` are fetched again; one that failed last time is fetched in
        the background and shows nothing meanwhile."""
        now = time.monotonic()
        waits = []
        for remote, listing in self._listings.items():
            if now - listing.fetched < LIST_TTL:
                continue
            task = self._refresh(client, remote)
            if listing.answered is not False:
                waits.append(task)
        await self._wait(waits)
        return self._merged(
            (remote, listing.models)
            for remote, listing in self._listings.items()
            if listing.answered
        )

    async def running(self, client: httpx.AsyncClient) -> list[JsonObject]:
        """The models the remotes have loaded (their ``/api/ps``), filtered and marked
        as :meth:`tags` does. Asks only the remotes that answered last time."""

        async def ps(remote: str) -> tuple[str, dict[str, JsonObject]]:
            try:
                return remote, listed_models(await _ask(client, self.sections[remote], "/api/ps"))
            except (httpx.HTTPError, ValueError) as error:
                log.info("remote %r did not list its running models: %s", remote, error)
                return remote, {}

        asked = [r for r, listing in self._listings.items() if listing.answered is not False]
        return self._merged(await asyncio.gather(*(ps(remote) for remote in asked)))

    def _merged(self, listings: Iterable[tuple[str, dict[str, JsonObject]]]) -> list[JsonObject]:
        seen: set[str] = set()
        entries = []
        for remote, models in listings:
            section = self.sections[remote]
            for key, entry in routed(section, models):
                if key in seen:
                    continue
                seen.add(key)
                entries.append(marked(entry, section.url))
        return entries

    # -- fetching listings

    def _refresh(self, client: httpx.AsyncClient, remote: str) -> asyncio.Task[None]:
        """The fetch of ``remote``'s listing: the one in flight, or a new one."""
        listing = self._listings[remote]
        if listing.task is None or listing.task.done():
            fetch = self._fetch(client, self.sections[remote], listing, remote)
            listing.task = asyncio.get_running_loop().create_task(fetch)
        return listing.task

    @staticmethod
    async def _wait(tasks: Iterable[asyncio.Task[None]]) -> None:
        """Wait for shared fetches without cancelling them when the waiter is
        cancelled (a client that leaves must not cut a fetch others wait for)."""
        pending = set(tasks)
        if pending:
            await asyncio.wait(pending)

    @staticmethod
    async def _fetch(
        client: httpx.AsyncClient, section: RemoteSection, listing: _Listing, remote: str
    ) -> None:
        try:
            body = await _ask(client, section, "/api/tags")
            if not isinstance(body, dict) or not isinstance(body.get("models"), list):
                raise ValueError("not a model list")
        except (httpx.HTTPError, ValueError) as error:
            detail = failure_detail(error)
            if listing.answered is not False:  # say it once, not at every retry
                log.warning("remote %r at %s is not answering: %s", remote, section.url, detail)
            listing.answered, listing.error = False, detail
        except Exception:  # a bug here must not leave an unretrieved task exception
            log.exception("listing the models of remote %r failed", remote)
            listing.answered, listing.error = False, "internal error; see the gateway log"
        else:
            if listing.answered is False:
                log.info("remote %r at %s answers again", remote, section.url)
            listing.models = listed_models(body)
            listing.answered, listing.error = True, ""
        finally:
            listing.fetched = time.monotonic()


async def _ask(client: httpx.AsyncClient, section: RemoteSection, path: str) -> object:
    """``GET path`` on a remote, with its key, within ``LIST_TIMEOUT``: the JSON it
    answers. Raises httpx's errors for no answer or an error status, ValueError
    for a body that is not JSON."""
    response = await client.get(
        section.url + path,
        headers=remote_headers(section.url, section.api_key),
        timeout=LIST_TIMEOUT,
    )
    response.raise_for_status()
    return response.json()


@dataclass(frozen=True, slots=True)
class RemoteStatus:
    """Whether a remote answered ``plan``'s probe."""

    remote: str
    url: str
    answering: bool
    detail: str  # "HTTP 200, 3 models", "connection refused", ...
    models: tuple[JsonObject, ...] = ()  # its /api/tags entries we route (its `models` only)

    def warning(self) -> str:
        """The line ``plan`` and ``list`` print for a remote that does not answer."""
        return f"remote {self.remote!r} at {self.url} is not answering: {self.detail}"


def probe_remotes(
    sections: Mapping[str, RemoteSection], *, timeout: float = 1.0
) -> list[RemoteStatus]:
    """``GET /api/tags`` on each remote, in parallel, with its key; by name. For ``plan``
    and ``list``."""
    from concurrent.futures import ThreadPoolExecutor

    def probe(item: tuple[str, RemoteSection]) -> RemoteStatus:
        remote, section = item
        try:
            response = client.get(
                section.url + "/api/tags", headers=remote_headers(section.url, section.api_key)
            )
            response.raise_for_status()
            listed = listed_models(response.json())
            count = len(listed)
        except (httpx.HTTPError, ValueError) as error:
            detail = failure_detail(error)
            if isinstance(error, httpx.TimeoutException):
                detail = f"no answer within {timeout:g} s"
            return RemoteStatus(remote, section.url, False, detail)
        plural = "" if count == 1 else "s"
        entries = tuple(entry for _key, entry in routed(section, listed))
        return RemoteStatus(remote, section.url, True, f"HTTP 200, {count} model{plural}", entries)

    if not sections:
        return []
    with (
        httpx.Client(trust_env=False, timeout=timeout) as client,
        ThreadPoolExecutor(max_workers=min(8, len(sections))) as pool,
    ):
        statuses = list(pool.map(probe, sorted(sections.items())))
    return statuses
