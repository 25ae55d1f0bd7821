"""Apply progress on stderr: a byte bar per pull, one line per finished action.

The CLI's :class:`~mlx_lama.orchestrator.apply.Reporter`. On a terminal the
bars animate; elsewhere (CI, pipes) only the finished lines are printed.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

if TYPE_CHECKING:
    from mlx_lama.orchestrator.apply import Outcome
    from mlx_lama.orchestrator.plan import Action


class ApplyReporter:
    """Rich progress for pulls plus a ✓/✗ line per action."""

    def __init__(self) -> None:
        self.console = Console(stderr=True, highlight=False)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
            disable=not self.console.is_terminal,
        )
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> ApplyReporter:
        self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def started(self, action: Action) -> None:
        if action.kind.value in ("start", "restart"):
            self.console.print(f"  {action.kind.value}ing {action.target} ...", markup=False)

    def progress(self, action: Action, done: int, total: int) -> None:
        with self._lock:
            task = self._tasks.get(action.target)
            if task is None:
                task = self._progress.add_task(f"pull {action.repo}", total=total or None)
                self._tasks[action.target] = task
        self._progress.update(task, completed=done, total=total or None)

    def finished(self, outcome: Outcome) -> None:
        action = outcome.action
        with self._lock:
            task = self._tasks.pop(action.target, None)
        if task is not None:
            self._progress.remove_task(task)
        mark = "[green]✓[/]" if outcome.ok else "[red]✗[/]"
        detail = f" ({outcome.detail})" if outcome.ok and outcome.detail else ""
        self.console.print(f"{mark} {action.kind.value} {action.target}{detail}", markup=True)
        if not outcome.ok:
            self.console.print(f"    {outcome.detail}", markup=False)
