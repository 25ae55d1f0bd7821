"""Timing and reporting helpers shared by the benchmark suites.

Runs commands as subprocesses, summarises the times (median, min, max), and
replaces one marked section of docs/benchmarks.md, leaving the others alone.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Every figure here comes from `bench/`; each section names the command that
produced it. Regenerate all of them with `uv run --all-extras python -m bench`.
"""


@dataclass(frozen=True, slots=True)
class Measurement:
    label: str
    seconds: tuple[float, ...]
    target: float | None = None

    @property
    def runs(self) -> int:
        return len(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def row(self) -> str:
        target = "-"
        if self.target is not None:
            verdict = "met" if self.median < self.target else "missed"
            target = f"< {self.target:.1f} s ({verdict})"
        return (
            f"| {self.label} | {self.median:.3f} s | {min(self.seconds):.3f} s "
            f"| {max(self.seconds):.3f} s | {target} |"
        )

    def line(self) -> str:
        return f"{self.label:45s} median {self.median * 1000:6.0f} ms"


def time_command(
    label: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    runs: int,
    *,
    target: float | None = None,
    before_each: Callable[[], None] | None = None,
) -> Measurement:
    """Run ``argv`` once to warm the OS caches, then ``runs`` timed times.

    The warm-up run may write bytecode even where ``PYTHONDONTWRITEBYTECODE`` is
    set (as it is on some CI machines): a user's first run leaves ``.pyc`` files,
    so later runs start from them, and timing compilation would measure the
    machine's settings, not the command."""
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(argv, env=env, capture_output=True, check=True)
    seconds = []
    for _ in range(runs):
        if before_each:
            before_each()
        start = time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True, check=False)
        seconds.append(time.perf_counter() - start)
    return Measurement(label, tuple(seconds), target)


def machine() -> str:
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, measured {datetime.now(UTC):%Y-%m-%d}"
    )


def write_section(name: str, body: str) -> None:
    """Replace the section marked ``name`` in docs/benchmarks.md (add it if new)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else HEADER
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text, encoding="utf-8")
