"""The scheduler's rules (``orchestrator/policy.py``), each on literal slots.

No process, no event loop, no clock: every rule is a pure function of the
slots and numbers it is given, and each table row says what it decides.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from mlx_lama.backends.spec import RunRecord, ServerSpec
from mlx_lama.orchestrator import policy
from mlx_lama.orchestrator.policy import Evict, WaitForIdle
from mlx_lama.orchestrator.slots import SchedulerError, Slot
from mlx_lama.timings import Timings
from mlx_lama.units import Duration

DEFAULTS = Timings()

GB = 10**9


def spec(name: str = "a", *, serve: str = "on-demand", port: int | None = None) -> ServerSpec:
    return ServerSpec(
        name=name,
        model=name,
        backend="mlx-lm",
        engine="mlx-lm",
        serve=serve,  # type: ignore[arg-type]
        model_path=None,
        port=port,
    )


def record(name: str = "a", port: int = 9000) -> RunRecord:
    return RunRecord(
        name=name, pid=1, port=port, host="127.0.0.1", engine="mlx-lm", model=name,
        spec_hash="x", argv=(), started_at=0.0, process_started=0.0, log_path="",
    )  # fmt: skip


def slot(name: str = "a", **fields: Any) -> Slot:
    serve = fields.pop("serve", "on-demand")
    made = Slot(
        spec=spec(name, serve=serve, port=fields.pop("port", None)),
        keep_alive=fields.pop("keep_alive", Duration(300.0)),
        pinned=fields.pop("pinned", False),
        memory=fields.pop("memory", GB),
    )
    for key, value in fields.items():
        setattr(made, key, value)
    return made


# -- a manifest change


def test_reload_keeps_a_server_whose_spec_is_unchanged_and_replaces_a_running_changed_one() -> None:
    running = slot("a", state="ready", record=record())
    changed = replace(spec("a"), args=("--max-kv-size", "4096"))
    replacing = slot("a", replaces=running)  # its own start has not happened yet
    assert policy.reload_change(None, spec("a")) == "new"
    assert policy.reload_change(running, spec("a")) == "keep"
    assert policy.reload_change(running, changed) == "replace"
    assert policy.reload_change(slot("a", state="stopped"), changed) == "new"  # nothing runs
    assert policy.reload_change(replacing, changed) == "replace"  # the old server still runs


def test_removed_names_the_slots_the_new_manifest_lacks() -> None:
    current = {"a": slot("a"), "b": slot("b"), "c": slot("c")}
    assert policy.removed(current, {"a", "c", "d"}) == ["b"]
    assert policy.removed(current, set()) == ["a", "b", "c"]


# -- expiry, due starts, probes


@pytest.mark.parametrize(
    ("fields", "now", "expected"),
    [
        ({"state": "ready", "idle_since": 0.0}, 300.0, "idle for 5m"),
        ({"state": "ready", "idle_since": 0.0}, 299.0, None),  # not yet
        ({"state": "ready", "idle_since": 0.0, "refs": 1}, 900.0, None),  # a request holds it
        ({"state": "ready", "idle_since": 0.0, "serve": "always"}, 900.0, None),
        ({"state": "starting", "idle_since": 0.0}, 900.0, None),
        ({"state": "ready", "keep_alive": Duration.parse(-1)}, 10.0**9, None),  # forever
        # A request's keep_alive replaces the manifest's for this load.
        ({"state": "ready", "idle_since": 0.0, "session": Duration(10.0)}, 10.0, "idle for 10s"),
    ],
)
def test_expiry(fields: dict[str, Any], now: float, expected: str | None) -> None:
    assert policy.expiry(slot(**fields), now) == expected


@pytest.mark.parametrize(
    ("fields", "now", "expected"),
    [
        ({"serve": "always"}, 0.0, True),
        ({"serve": "always", "missing": True}, 0.0, False),  # its files are being pulled
        ({"serve": "always", "retry_at": 5.0}, 4.0, False),  # backing off
        ({"serve": "always", "retry_at": 5.0}, 5.0, True),
        ({"serve": "always", "state": "ready"}, 0.0, False),
        ({"serve": "always", "state": "failed"}, 0.0, False),  # given up until the manifest changes
        ({}, 0.0, False),  # on demand: a request starts it
        ({"restart_pending": True, "state": "restarting"}, 0.0, True),  # crashed while loaded
    ],
)
def test_start_due(fields: dict[str, Any], now: float, expected: bool) -> None:
    assert policy.start_due(slot(**fields), now) is expected


def test_start_due_waits_for_a_load_already_under_way() -> None:
    busy = slot(serve="always")
    busy.loading = object()  # type: ignore[assignment]  # only its presence is read
    assert policy.start_due(busy, 0.0) is False


@pytest.mark.parametrize(
    ("fields", "now", "expected"),
    [
        ({"state": "ready", "record": record()}, 30.0, True),
        ({"state": "ready", "record": record(), "last_used": 10.0}, 30.0, False),
        ({"state": "ready", "record": record(), "last_probe": 10.0}, 40.0, True),
        ({"state": "ready", "record": record(), "refs": 1}, 99.0, False),  # the watchdog's job
        ({"state": "starting", "record": record()}, 99.0, False),
    ],
)
def test_probe_due(fields: dict[str, Any], now: float, expected: bool) -> None:
    assert policy.probe_due(slot(**fields), now, 30.0) is expected


# -- failures


def test_backoff_doubles_then_gives_up() -> None:
    failures: list[float] = []
    delays = []
    for second in range(policy.MAX_FAILURES):
        failures, delay = policy.backoff(failures, 1000.0 + second, DEFAULTS)
        delays.append(delay)
    assert delays == [1.0, 2.0, 4.0, 8.0, None]
    fast = Timings(first_backoff=0.01)
    assert policy.backoff([1000.0], 1001.0, fast)[1] == 0.02  # the timings decide


def test_backoff_forgets_failures_outside_the_window_and_is_capped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    after = DEFAULTS.failure_window + 1.0
    recent, delay = policy.backoff([0.0] * 4, after, DEFAULTS)
    assert recent == [after] and delay == DEFAULTS.first_backoff
    assert policy.backoff([0.0] * 4, 2.0, Timings(failure_window=1.0))[0] == [2.0]
    monkeypatch.setattr(policy, "MAX_FAILURES", 100)  # to reach the cap before giving up
    assert policy.backoff([1.0] * 9, 10.0, DEFAULTS)[1] == DEFAULTS.max_backoff  # not 2**9 s


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, "stopped"),
        ({"serve": "always"}, "restarting"),
        ({"restart_pending": True}, "restarting"),
    ],
)
def test_waiting_state(fields: dict[str, Any], expected: str) -> None:
    assert policy.waiting_state(slot(**fields)) == expected


# -- requests


def test_serving_uses_the_old_server_while_its_successor_starts_beside_it() -> None:
    old = slot(state="ready", record=record())
    new = slot(replaces=old, overlap=True, state="starting")
    assert policy.serving(new) is old
    new.state = "ready"
    assert policy.serving(new) is new
    assert policy.serving(slot(replaces=old, overlap=False)) is not old  # stopped first


def test_unavailable_says_why_and_what_to_do() -> None:
    assert policy.unavailable(slot(), DEFAULTS) is None
    missing = policy.unavailable(slot(missing=True), DEFAULTS)
    assert missing is not None and missing.status == 503
    assert "not downloaded yet" in missing.message and "mlx-lama pull a" in (missing.hint or "")
    failed = policy.unavailable(slot(state="failed", failures=[1.0, 2.0], error="boom"), DEFAULTS)
    assert failed is not None and failed.status == 503
    assert "failed 2 times within 10m00s" in failed.message and "boom" in failed.message


@pytest.mark.parametrize(
    ("fields", "keep_alive", "unload"),
    [
        ({}, True, False),
        ({"state": "ready"}, True, True),
        ({"state": "ready", "pinned": True}, False, True),
        ({"state": "ready", "serve": "always"}, False, False),
    ],
)
def test_what_a_request_may_change(fields: dict[str, Any], keep_alive: bool, unload: bool) -> None:
    assert policy.takes_keep_alive(slot(**fields)) is keep_alive
    assert policy.unloadable(slot(**fields)) is unload


# -- making room


def loaded(name: str, last_used: float, **fields: Any) -> Slot:
    return slot(name, state="ready", record=record(name), last_used=last_used, **fields)


def test_room_fits_without_evicting() -> None:
    new = slot("n")
    assert policy.room_for(new, [loaded("a", 1.0)], max_loaded=2, budget=None) is None


def test_room_evicts_the_least_recently_used_idle_on_demand_server() -> None:
    a, b = loaded("a", 5.0), loaded("b", 1.0)
    pinned = loaded("p", 0.0, pinned=True)
    always = loaded("s", 0.0, serve="always")
    room = policy.room_for(slot("n"), [a, b, pinned, always], max_loaded=3, budget=None)
    assert room == Evict(b)


def test_always_servers_do_not_count_toward_max_loaded() -> None:
    always = [loaded(f"s{i}", 0.0, serve="always") for i in range(3)]
    assert policy.room_for(slot("n"), always, max_loaded=1, budget=None) is None
    # ... and an always server itself may start past max_loaded.
    full = [loaded("a", 0.0)]
    assert policy.room_for(slot("n", serve="always"), full, max_loaded=1, budget=None) is None


def test_room_waits_when_every_candidate_is_busy() -> None:
    busy = loaded("a", 0.0, refs=1)
    assert policy.room_for(slot("n"), [busy], max_loaded=1, budget=None) == WaitForIdle()


def test_room_refuses_when_nothing_can_ever_make_room() -> None:
    pinned = loaded("p", 0.0, pinned=True)
    starting = slot("s", state="starting")
    refusal = policy.room_for(slot("n"), [pinned, starting], max_loaded=2, budget=None)
    assert isinstance(refusal, SchedulerError) and refusal.status == 503
    assert "max_loaded" in refusal.message


def test_room_for_memory_evicts_and_refuses_a_model_over_the_whole_budget() -> None:
    big = loaded("big", 0.0, memory=6 * GB)
    small = loaded("small", 9.0, memory=GB)
    room = policy.room_for(slot("n", memory=4 * GB), [big, small], max_loaded=9, budget=10 * GB)
    assert room == Evict(big)  # the budget, not the count, is what is exceeded
    assert policy.room_for(slot("n", memory=3 * GB), [big], max_loaded=9, budget=10 * GB) is None
    huge = policy.room_for(slot("n", memory=11 * GB), [], max_loaded=9, budget=10 * GB)
    assert isinstance(huge, SchedulerError) and "memory budget of 10.0 GB" in huge.message


@pytest.mark.parametrize(
    ("new_port", "budget", "available", "expected"),
    [
        (None, None, 4 * GB, True),  # a free port, and memory for both
        (9000, None, 4 * GB, False),  # the same port: the old one must go first
        (None, None, GB // 2, False),  # not enough free memory
        (None, 3 * GB, 0, True),  # within the budget: loaded 1 + old 1 + new 1
        (None, 2 * GB, 0, False),
    ],
)
def test_fits_beside(
    new_port: int | None, budget: int | None, available: int, expected: bool
) -> None:
    old = loaded("a", 0.0)
    new = slot("a", port=new_port)
    others = [loaded("b", 0.0)]
    assert policy.fits_beside(old, new, others, budget=budget, available=available) is expected
