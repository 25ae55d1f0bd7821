"""The scheduler's rules, as pure functions of slots, settings and the clock.

Each answers one question the daemon asks about its servers (keep or replace
a server after a manifest change, is one idle too long, is a start due, which
server makes room for another, how long to back off after a failure, may a
request be served at all) and returns the decision; none starts, stops,
waits or reads anything but its arguments. :class:`Scheduler` (in
``scheduler.py``) carries the decisions out. Each rule is tested on literal
slots in ``tests/test_policy.py``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from mlx_lama.backends.spec import ServerSpec
from mlx_lama.humanize import duration_str
from mlx_lama.orchestrator.slots import SchedulerError, Slot, SlotState
from mlx_lama.timings import Timings

MAX_FAILURES = 5  # failed starts and crashes within the failure window before giving up

# -- a manifest change

Change = Literal["keep", "replace", "new"]


def reload_change(old: Slot | None, spec: ServerSpec) -> Change:
    """What a reload does with the server of ``spec``, whose slot so far is ``old``:
    ``keep`` it (same launch spec: its process and state stay), ``replace`` it (the
    spec changed and a process of the old spec runs or is being replaced: a new
    slot takes over from it), or give it a ``new`` slot (nothing runs to take over)."""
    if old is not None and old.spec.spec_hash == spec.spec_hash:
        return "keep"
    if old is not None and (old.record is not None or old.replaces is not None):
        return "replace"
    return "new"


def removed(current: Mapping[str, Slot], servers: Collection[str]) -> list[str]:
    """Names of ``current`` slots whose server the new manifest's ``servers`` (their
    names) no longer have: theirs stop once idle."""
    return [name for name in current if name not in servers]


# -- idle expiry and due starts


def expiry(slot: Slot, now: float) -> str | None:
    """Why ``slot``'s server is stopped now (``idle for 5m``), or None: it is ready,
    has no request, is on demand and has been idle for its keep_alive."""
    duration = slot.duration()
    if slot.state != "ready" or slot.refs or slot.always or duration.forever:
        return None
    if now - slot.idle_since < duration.seconds:
        return None
    return f"idle for {duration}"


def start_due(slot: Slot, now: float) -> bool:
    """Is a start of ``slot``'s server due without a request asking for it: an
    ``always`` server, or one that crashed while loaded, whose files are in, that is
    not running or starting, once its backoff has passed."""
    wanted = (slot.restart_pending or slot.always) and not slot.missing
    waiting = slot.state in ("stopped", "restarting") and slot.loading is None
    return wanted and waiting and now >= slot.retry_at


def probe_due(slot: Slot, now: float, interval: float) -> bool:
    """Is a liveness probe of ``slot``'s server due: it is ready and idle, and neither
    used nor probed for ``interval`` seconds."""
    if slot.state != "ready" or slot.record is None or slot.refs:
        return False
    return now - max(slot.last_used, slot.last_probe) >= interval


# -- failures


def backoff(
    failures: Sequence[float], now: float, timings: Timings
) -> tuple[list[float], float | None]:
    """Count one more failure at ``now``: the failures still within the failure
    window, and the seconds to wait before the next start (the first backoff, doubling
    up to the longest), or None when there are MAX_FAILURES of them (give up)."""
    recent = [t for t in failures if now - t < timings.failure_window] + [now]
    if len(recent) >= MAX_FAILURES:
        return recent, None
    wait = timings.first_backoff * 2.0 ** (len(recent) - 1)
    return recent, float(min(timings.max_backoff, wait))


def waiting_state(slot: Slot) -> SlotState:
    """The state of ``slot`` while it waits out a backoff: ``restarting`` when it will
    be started again on its own (it crashed while loaded, or is ``always``)."""
    return "restarting" if slot.restart_pending or slot.always else "stopped"


# -- requests


def serving(slot: Slot) -> Slot:
    """The slot a request for ``slot``'s model uses now: the server it replaces
    while that one serves on beside it, else ``slot`` itself."""
    old = slot.replaces
    if slot.overlap and not slot.ready and old is not None and old.ready:
        return old
    return slot


def unavailable(slot: Slot, timings: Timings) -> SchedulerError | None:
    """Why a request for ``slot`` is refused now (503), or None: its files are not in
    the cache yet, or it has failed too often."""
    if slot.missing:
        return SchedulerError(
            f"model {slot.name!r} is not downloaded yet",
            status=503,
            hint=f"the daemon pulls models the manifest adds (see its log), or run "
            f"`mlx-lama pull {slot.name}`; retry when `mlx-lama list` shows it",
        )
    if slot.state == "failed":
        return SchedulerError(
            f"model {slot.name!r} failed {len(slot.failures)} times within "
            f"{duration_str(timings.failure_window)} and is not started again "
            f"(last: {slot.error})",
            status=503,
            hint="see `mlx-lama ps` and the server's log; saving the manifest or "
            "`mlx-lama apply` retries it",
        )
    return None


def takes_keep_alive(slot: Slot) -> bool:
    """May a request's ``keep_alive`` change how long ``slot`` stays loaded? Not for a
    pinned or ``always`` model: the manifest keeps those."""
    return not slot.pinned and not slot.always


def unloadable(slot: Slot) -> bool:
    """May a request (``keep_alive: 0``) stop ``slot``'s server: a ready on-demand one."""
    return not slot.always and slot.state == "ready"


# -- making room


@dataclass(frozen=True, slots=True)
class Evict:
    """Stop ``slot``'s server (idle, least recently used) to make room."""

    slot: Slot


@dataclass(frozen=True, slots=True)
class WaitForIdle:
    """Every server that could make room is busy: wait for one to go idle."""


Room = Evict | WaitForIdle | SchedulerError | None  # None: it fits


def room_for(slot: Slot, others: Iterable[Slot], *, max_loaded: int, budget: int | None) -> Room:
    """What starting ``slot`` needs next so that ``max_loaded`` and the memory
    ``budget`` hold: nothing (None), an eviction, a wait, or a refusal (an error to
    raise). ``others``: the other slots. ``always`` servers never count toward
    ``max_loaded`` and are never evicted, nor are pinned ones or ones starting."""
    if budget is not None and slot.memory > budget:
        return SchedulerError(
            f"model {slot.name!r} needs about {gb(slot.memory)} (its weights and the "
            f"bound on its KV caches), more than the memory budget of {gb(budget)}",
            status=503,
            hint="raise memory_budget under [server] in mlxlama.toml, or lower the model's "
            "kv_cache",
        )
    loaded = [s for s in others if s is not slot and s.loaded]
    counted = [s for s in loaded if not s.always]
    over_count = not slot.always and len(counted) >= max_loaded
    over_memory = budget is not None and sum(s.memory for s in loaded) + slot.memory > budget
    if not over_count and not over_memory:
        return None
    candidates = [s for s in counted if not s.pinned and s.state == "ready"]
    idle = sorted((s for s in candidates if s.refs == 0), key=lambda s: s.last_used)
    if idle:
        return Evict(idle[0])
    if candidates:
        return WaitForIdle()
    what = "max_loaded" if over_count else "the memory budget"
    return SchedulerError(
        f"cannot load {slot.name!r}: {what} is reached and every loaded model "
        "is pinned, always served or still starting",
        status=503,
        hint="raise max_loaded / memory_budget under [server], or unpin a model",
    )


def fits_beside(
    old: Slot, new: Slot, loaded: Iterable[Slot], *, budget: int | None, available: int
) -> bool:
    """Can ``new`` start while ``old`` (the server it replaces) still runs: another
    port, and memory for both (within ``budget`` beside the ``loaded`` slots, else
    within the ``available`` bytes the machine has free)? Never for a model served
    across hosts: the other hosts' memory is not known here, and such a model is
    usually there because it fills them."""
    if old.record is None or new.spec.port == old.record.port:
        return False
    if new.spec.distribution is not None or old.spec.distribution is not None:
        return False
    if budget is not None:
        return sum(s.memory for s in loaded) + old.memory + new.memory <= budget
    return new.memory <= available


def gb(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e8 else f"{math.ceil(size / 1e6)} MB"
