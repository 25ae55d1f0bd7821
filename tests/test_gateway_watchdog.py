"""The watchdog's judgement, on real processes standing in for an engine.

What counts as progress (CPU time, a growing log), when the probe is asked,
and what a probe that answers changes. The processes are plain Python loops:
these tests are about the watchdog's rule, not an engine's behaviour
(``test_gateway_recovery.py`` runs the real engine).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import pytest

from mlx_lama.orchestrator import process, watchdog
from mlx_lama.orchestrator.scheduler import Scheduler
from mlx_lama.orchestrator.slots import Lease, Loss, SchedulerConfig, Slot
from mlx_lama.orchestrator.watchdog import LOOK_INTERVAL, Watchdog, cpu_seconds
from mlx_lama.units import Duration
from tests.fixtures.servers import server_spec
from tests.test_runrecords import SLEEP, procs, record_for, spawn

__all__ = ["procs"]  # the fixture, shared with test_runrecords

BUSY = "while True: pass"  # a long prefill: a core busy, nothing written
TIMEOUT = 4.0  # wedge_timeout: 3 s of silence, then a probe of up to 1 s


class Probe:
    """The probe's answers, and how often it was asked."""

    def __init__(self, answers: bool) -> None:
        self.answers = answers
        self.asked = 0

    async def __call__(self, slot: watchdog.Slot, timeout: float) -> bool:
        assert 0 < timeout <= TIMEOUT / 4
        self.asked += 1
        return self.answers


def _busy_slot(proc: subprocess.Popen[bytes], tmp_path: Path) -> Slot:
    slot = Slot(spec=server_spec(tmp_path), keep_alive=Duration(300.0), pinned=False, memory=0)
    slot.state = "ready"
    slot.record = record_for(proc)
    slot.leases.add(Lease(slot=slot, waited=0.0, _on_release=Scheduler(SchedulerConfig())._release))
    return slot


def _watch(watchdog: Watchdog, slot: Slot, seconds: float) -> list[str]:
    """What ``watchdog`` says of ``slot`` at every look over ``seconds`` of a clock that
    runs ten times faster than the real one (a busy process still uses far more than
    the watchdog's share of a core per tick of it)."""

    async def run() -> list[str]:
        said = []
        now = 1000.0
        for _ in range(int(seconds / LOOK_INTERVAL) + 1):
            why = await watchdog.wedged(slot, TIMEOUT, now)
            if why is not None:
                said.append(why)
            now += LOOK_INTERVAL
            await asyncio.sleep(LOOK_INTERVAL / 10)
        return said

    return asyncio.run(run())


def test_a_process_that_uses_no_cpu_is_probed_and_wedged_when_the_probe_fails(
    procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    proc = spawn(procs, SLEEP)
    probe = Probe(answers=False)
    said = _watch(Watchdog(probe), _busy_slot(proc, tmp_path), TIMEOUT)
    assert probe.asked == 1
    assert said and "made no progress for 4s with 1 request in flight" in said[0]


def test_a_stopped_process_that_answers_the_probe_is_left_alone(
    procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    proc = spawn(procs, SLEEP)
    probe = Probe(answers=True)
    assert _watch(Watchdog(probe), _busy_slot(proc, tmp_path), TIMEOUT) == []
    assert probe.asked == 1  # after the silence: its clients are slow, it is not wedged


def test_a_busy_process_is_never_probed_however_long_it_writes_nothing(
    procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    proc = spawn(procs, BUSY)
    probe = Probe(answers=False)
    assert _watch(Watchdog(probe), _busy_slot(proc, tmp_path), TIMEOUT * 2) == []
    assert probe.asked == 0


def test_a_growing_log_is_progress(
    procs: list[subprocess.Popen[bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = spawn(procs, SLEEP)
    log = tmp_path / "engine.log"
    monkeypatch.setattr(process, "log_path_for", lambda name: log)
    slot = _busy_slot(proc, tmp_path)
    probe = Probe(answers=False)
    watchdog = Watchdog(probe)

    async def run() -> list[str]:
        said, now = [], 1000.0
        for step in range(int(TIMEOUT * 2 / LOOK_INTERVAL)):
            with log.open("a") as out:
                out.write(f"Prompt processing progress: {step}\n")
            why = await watchdog.wedged(slot, TIMEOUT, now)
            said += [why] if why else []
            now += LOOK_INTERVAL
        return said

    assert asyncio.run(run()) == [] and probe.asked == 0


def test_no_requests_in_flight_or_a_timeout_of_0_is_never_wedged(
    procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    proc = spawn(procs, SLEEP)
    proc.send_signal(signal.SIGSTOP)
    slot = _busy_slot(proc, tmp_path)
    probe = Probe(answers=False)

    async def run(timeout: float) -> list[str]:
        watchdog, said = Watchdog(probe), []
        for step in range(12):
            why = await watchdog.wedged(slot, timeout, 1000.0 + step * LOOK_INTERVAL)
            said += [why] if why else []
        return said

    assert asyncio.run(run(0.0)) == []
    for lease in slot.leases:
        lease.loss = Loss("crashed", "exited")  # what was in flight is no longer its work
    assert asyncio.run(run(TIMEOUT)) == [] and probe.asked == 0


def test_cpu_seconds_counts_a_busy_process_and_none_once_it_is_gone(
    procs: list[subprocess.Popen[bytes]],
) -> None:
    proc = spawn(procs, BUSY)
    first = cpu_seconds(proc.pid)
    asyncio.run(asyncio.sleep(0.5))
    second = cpu_seconds(proc.pid)
    assert first is not None and second is not None and second > first
    proc.kill()
    proc.wait(10)
    assert cpu_seconds(proc.pid) is None
