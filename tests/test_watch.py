"""watch_manifest: one notification per burst of saves, however the editor saves.

Drives the real watcher (inotify on Linux, FSEvents on macOS) on a folder in
``tmp_path``. Each test first proves the watcher is live (it re-saves the
manifest until a notification arrives, then waits for quiet), so the saves
under test can never fall before the watch started.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from mlx_lama.orchestrator.watch import Fingerprint, fingerprint, watch_manifest
from mlx_lama.timings import TIMINGS_ENV, timings

MANIFEST = "version = 1\n"
QUIET = 0.25  # seconds without a notification that count as "the burst is over"
DEADLINE = 10.0  # generous: only bounds waiting, never asserted on


class Watching:
    """``watch_manifest`` running as a task, with what each notification saw."""

    def __init__(self, manifest: Path) -> None:
        self.manifest = manifest
        self.stop = asyncio.Event()
        self.queue: asyncio.Queue[tuple[set[Path], Fingerprint]] = asyncio.Queue()
        self.idle_ticks = 0
        self.task = asyncio.create_task(self._consume())

    async def _consume(self) -> None:
        async for changed in watch_manifest(self.manifest, stop=self.stop):
            if not changed:  # an idle tick, not a notification
                self.idle_ticks += 1
                continue
            # What a reconciler would read on being told, taken at once.
            await self.queue.put((changed, fingerprint(self.manifest)))

    async def next(self, timeout: float = DEADLINE) -> tuple[set[Path], Fingerprint] | None:
        """The next notification, or None if none came within ``timeout``."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None

    async def settle(self) -> list[tuple[set[Path], Fingerprint]]:
        """Every notification until none has come for ``QUIET`` seconds."""
        seen = []
        while (item := await self.next(QUIET)) is not None:
            seen.append(item)
        return seen

    async def burst(self) -> list[tuple[set[Path], Fingerprint]]:
        """The notifications a save caused: the first (waited for up to ``DEADLINE``)
        and any that follow it closely."""
        first = await self.next()
        assert first is not None, f"no notification within {DEADLINE:.0f}s"
        return [first, *await self.settle()]

    async def live(self) -> None:
        """Return once the watcher reports saves, with nothing left queued."""
        await asyncio.sleep(0)  # let the task set its watch up before the first save
        for _ in range(int(DEADLINE / 0.2)):
            self.manifest.write_text(MANIFEST)
            if await self.next(0.2) is not None:
                await self.settle()
                return
        raise AssertionError(f"the watcher never reported a save within {DEADLINE:.0f}s")

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, DEADLINE)


def run_watching(
    folder: Path, scenario: Callable[[Watching], Awaitable[None]], *, manifest: str = MANIFEST
) -> None:
    """Write the manifest in ``folder``, start watching it, run ``scenario``, always stop."""
    path = folder / "mlxlama.toml"
    path.write_text(manifest)

    async def main() -> None:
        watching = Watching(path)
        try:
            await watching.live()
            await scenario(watching)
        finally:
            await watching.close()

    asyncio.run(main())


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def expect_final(watching: Watching, final: str) -> list[set[Path]]:
    """At least one notification came, and the last one already saw ``final``."""
    seen = await watching.burst()
    assert seen[-1][1][0] == digest(final)
    assert fingerprint(watching.manifest)[0] == digest(final)
    return [changed for changed, _ in seen]


def test_fingerprint_digests_both_files_and_none_for_missing(tmp_path: Path) -> None:
    manifest = tmp_path / "mlxlama.toml"
    assert fingerprint(manifest) == (None, None)
    manifest.write_text(MANIFEST)
    assert fingerprint(manifest) == (digest(MANIFEST), None)
    (tmp_path / "mlxlama.lock").write_text("version = 1\n")
    assert fingerprint(manifest) == (digest(MANIFEST), digest("version = 1\n"))


def test_in_place_write_is_reported(tmp_path: Path) -> None:
    final = 'version = 1\n\n[models.a]\nrepo = "org/a"\n'

    async def scenario(watching: Watching) -> None:
        with watching.manifest.open("r+") as handle:  # truncate and write, like sed -i
            handle.truncate(0)
            handle.write(final)
        bursts = await expect_final(watching, final)
        assert all(changed == {watching.manifest} for changed in bursts)

    run_watching(tmp_path, scenario)


def test_write_then_rename_is_reported(tmp_path: Path) -> None:
    final = 'version = 1\n\n[models.b]\nrepo = "org/b"\n'

    async def scenario(watching: Watching) -> None:
        temporary = tmp_path / ".mlxlama.toml.tmp"
        temporary.write_text(final)
        temporary.replace(watching.manifest)  # os.replace: an atomic rename over the manifest
        await expect_final(watching, final)
        # A second rename-save still works: the watch is on the folder, not the old inode.
        again = final + "# again\n"
        temporary.write_text(again)
        temporary.replace(watching.manifest)
        await expect_final(watching, again)

    run_watching(tmp_path, scenario)


def test_delete_then_recreate_is_reported(tmp_path: Path) -> None:
    final = 'version = 1\n\n[models.c]\nrepo = "org/c"\n'

    async def scenario(watching: Watching) -> None:
        watching.manifest.unlink()
        watching.manifest.write_text(final)
        await expect_final(watching, final)

    run_watching(tmp_path, scenario)


def test_a_deleted_manifest_is_reported_as_missing(tmp_path: Path) -> None:
    async def scenario(watching: Watching) -> None:
        watching.manifest.unlink()
        seen = await watching.burst()
        assert seen[-1][1] == (None, None)

    run_watching(tmp_path, scenario)


def test_quick_saves_in_a_row_end_on_the_last_content(tmp_path: Path) -> None:
    saves = [f"version = 1\n# save {n}\n" for n in range(10)]

    async def scenario(watching: Watching) -> None:
        for text in saves:
            watching.manifest.write_text(text)
        await expect_final(watching, saves[-1])

    run_watching(tmp_path, scenario)


def test_other_files_in_the_folder_are_ignored(tmp_path: Path) -> None:
    async def scenario(watching: Watching) -> None:
        (tmp_path / "notes.md").write_text("hello\n")
        (tmp_path / ".mlxlama.toml.swp").write_bytes(b"\0" * 64)  # an editor's swap file
        (tmp_path / "other.toml").write_text(MANIFEST)
        (tmp_path / "other.toml").replace(tmp_path / "renamed.toml")
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / "mlxlama.toml").write_text(MANIFEST)  # not recursive
        assert await watching.settle() == []

    run_watching(tmp_path, scenario)


def test_a_lock_file_change_is_reported(tmp_path: Path) -> None:
    lock_text = "version = 1\n"

    async def scenario(watching: Watching) -> None:
        lock = tmp_path / "mlxlama.lock"
        lock.write_text(lock_text)
        seen = await watching.burst()
        assert {changed for bursts, _ in seen for changed in bursts} == {lock}
        assert seen[-1][1] == (digest(MANIFEST), digest(lock_text))

    run_watching(tmp_path, scenario)


def test_a_quiet_folder_still_yields_idle_ticks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller gets to compare fingerprints every ``watch_idle`` even when no event came:
    the backstop for a save made before the watch was in place."""
    monkeypatch.setenv(TIMINGS_ENV, "watch_idle=200ms")  # not the default second

    async def scenario(watching: Watching) -> None:
        ticks = watching.idle_ticks
        await asyncio.sleep(timings().watch_idle * 2.5)  # only bounds the wait
        assert watching.idle_ticks > ticks
        assert watching.queue.empty()  # ticks are not notifications

    run_watching(tmp_path, scenario)
