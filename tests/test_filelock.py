"""The apply lock (``mlx_lama/filelock.py``), between real processes and threads.

Holders are small Python children that take the lock and keep it until a
line arrives on their stdin; every one is killed in ``finally``.
"""

from __future__ import annotations

import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from mlx_lama import paths
from mlx_lama.filelock import ApplyLockTimeout, apply_lock

HOLDER = """
import sys
from mlx_lama.filelock import apply_lock
with apply_lock(on_wait=lambda: print("waiting", flush=True)):
    print("locked", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""


class Holder:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def line(self, timeout: float = 20.0) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"pid {self.proc.pid} said nothing for {timeout}s"
        return self.proc.stdout.readline().strip()

    def silent_for(self, seconds: float) -> bool:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], seconds)
        return not ready

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()


@contextmanager
def holders(count: int) -> Iterator[list[Holder]]:
    started: list[Holder] = []
    try:
        for _ in range(count):
            started.append(Holder())
        yield started
    finally:
        for holder in started:
            holder.proc.kill()
            holder.proc.wait(timeout=10)
            for stream in (holder.proc.stdin, holder.proc.stdout):
                if stream is not None:
                    stream.close()


def test_second_process_waits_until_the_first_releases() -> None:
    with holders(1) as (first,):
        assert first.line() == "locked"
        with holders(1) as (second,):
            assert second.line() == "waiting"
            assert second.silent_for(0.5)  # still waiting
            first.release()
            assert first.line() == "released"
            assert second.line() == "locked"
            second.release()
            assert second.line() == "released"


def test_timeout_names_the_holder() -> None:
    with holders(1) as (first,):
        assert first.line() == "locked"
        waited: list[str] = []
        began = time.monotonic()
        with (
            pytest.raises(ApplyLockTimeout, match=f"pid {first.proc.pid}: -c"),
            apply_lock(on_wait=lambda: waited.append("waited"), timeout=0.3),
        ):
            pytest.fail("got a lock another process holds")
        assert time.monotonic() - began >= 0.3  # waited the whole timeout
        assert waited == ["waited"]


def test_a_killed_holder_releases_the_lock() -> None:
    with holders(1) as (first,):
        assert first.line() == "locked"
        first.proc.kill()
        first.proc.wait()
        with apply_lock(timeout=5):
            pass


def test_free_lock_is_taken_without_waiting() -> None:
    waited: list[str] = []
    with apply_lock(on_wait=lambda: waited.append("waited")):
        assert paths.apply_lock().exists()
    assert waited == []
    assert paths.apply_lock().exists()  # never deleted
    assert paths.apply_lock().read_text() == ""  # no stale holder left behind


def test_reentrant_in_one_thread_exclusive_across_threads() -> None:
    events: list[str] = []

    def other() -> None:
        with apply_lock(on_wait=lambda: events.append("other waits")):
            events.append("other holds")

    with apply_lock():
        with apply_lock(timeout=0.1):  # the same thread again: no deadlock
            events.append("nested")
        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(0.3)
        events.append("main releases")
    thread.join(timeout=10)
    assert events == ["nested", "other waits", "main releases", "other holds"]
