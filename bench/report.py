"""Timing and reporting helpers shared by the benchmark suites.

Runs commands as subprocesses, summarises the times (median, min, max), puts
ours beside a peer (table row and ratio, :class:`Comparison`), draws one PNG
chart per measurement under docs/benchmarks/, and replaces one marked section
of docs/benchmarks.md, leaving the others alone. It measures nothing itself
and starts no servers: the suites do, and stop what they start.
"""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from tests.fixtures.hf_env import SCRUBBED_ENV, layout

from mlx_lama.backends.interpreters import ENGINES_ENV, engines_dir

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
CHARTS = DOC.parent / "benchmarks"  # chart(NAME) writes CHARTS / "NAME.png"
HEADER = """# Benchmarks

Every figure here comes from `bench/`; each section names the command that
produced it, the versions and the machine. Regenerate all of them, with the
charts under `benchmarks/`, with `uv run --all-extras python -m bench` (one
suite: `python -m bench gateway`).

## How to read these

- **Ours beside a peer, from the same run.** Each table puts an mlx-lama
  command or path beside what a user would otherwise run (the engine's own
  port, `hf download`, `hf cache ls`, `mlx_lm manage`, `mlx_lm generate`,
  `vllm-mlx --models-config`) or beside a floor (`python -c pass`), measured
  alternately in one run. The ratio is ours over the peer, medians: for times
  and memory below 1 means ours needs less; for tokens/s above 1 means ours
  streams more. Min and max show the spread; on a shared 2-core machine a
  single run can be far off, so read the medians.
- **Bounded by the engine.** Generation (tokens/s, time to first token, the
  pause between tokens) and model loading are the engine's work: through the
  gateway the best possible ratio is 1.0, and the question is how close it
  stays. A process between the client and the engine costs CPU per token,
  which on a small machine is CPU the engine cannot use; the bare relay in the
  streaming section shows that floor. Under concurrency the engine's batching
  (when it admits new requests) decides the time to first token more than
  anything in front of it.
- **Bounded by the interpreter.** Every command is a fresh Python process;
  `python -c pass` is the floor none can go under, and importing a library
  costs tens to hundreds of milliseconds (pydantic, httpx, mlx). Commands that
  answer from the daemon (`run` with a warm model) skip loading the engine.
- **Physical floors.** Downloads are bounded by the disk and the loopback
  network of this machine (the hub stand-in serves from local files);
  generation by memory bandwidth and compute (here a CPU, and a tiny model, so
  the figures show overheads rather than model speed).
"""


@dataclass(frozen=True, slots=True)
class Measurement:
    label: str
    seconds: tuple[float, ...]  # one sample per run; in ``unit`` when that is not "s"
    target: float | None = None
    unit: str = "s"

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
            f"| {self.label} | {self.median:.3f} {self.unit} | {min(self.seconds):.3f} "
            f"{self.unit} | {max(self.seconds):.3f} {self.unit} | {target} |"
        )

    def spread(self) -> str:
        """``median (min-max) unit``, as the comparison tables show it."""
        low, high = min(self.seconds), max(self.seconds)
        return f"{_figure(self.median)} ({_figure(low)}-{_figure(high)}) {self.unit}"

    def line(self) -> str:
        return f"{self.label:45s} median {self.median * 1000:6.0f} ms"


def _figure(value: float) -> str:
    """Three significant decimals for small figures, fewer as they grow (``0.123``,
    ``12.3``, ``1234``)."""
    size = abs(value)
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}"


def time_command(
    label: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    runs: int,
    *,
    target: float | None = None,
    before_each: Callable[[], None] | None = None,
    after_each: Callable[[], None] | None = None,
) -> Measurement:
    """Run ``argv`` once to warm the OS caches, then ``runs`` timed times.

    ``before_each`` runs (untimed) before every run, the warm-up included;
    ``after_each`` after every timed run, to check what the run left behind.

    The warm-up run may write bytecode even where ``PYTHONDONTWRITEBYTECODE`` is
    set (as it is on some CI machines): a user's first run leaves ``.pyc`` files,
    so later runs start from them, and timing compilation would measure the
    machine's settings, not the command."""
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if before_each:
        before_each()
    subprocess.run(argv, env=env, capture_output=True, check=True)
    seconds = []
    for _ in range(runs):
        if before_each:
            before_each()
        start = time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True, check=False)
        seconds.append(time.perf_counter() - start)
        if after_each:
            after_each()
    return Measurement(label, tuple(seconds), target)


@dataclass(frozen=True, slots=True)
class Comparison:
    """One measurement of ours beside the same measurement of a peer, from the same run."""

    what: str  # what both did, e.g. "download a 28 MB repo into an empty cache"
    ours: Measurement
    peer: Measurement

    @property
    def ratio(self) -> float:
        """Ours over the peer, medians: below 1 means ours took less (of time, memory)."""
        return self.ours.median / self.peer.median

    def row(self) -> str:
        runs = f"{self.ours.runs}"
        if self.peer.runs != self.ours.runs:
            runs += f" / {self.peer.runs}"
        return (
            f"| {self.what} | {self.ours.label} | {self.ours.spread()} | {self.peer.label} "
            f"| {self.peer.spread()} | {self.ratio:.2f} | {runs} |"
        )


def comparison_table(comparisons: Sequence[Comparison]) -> str:
    """A markdown table, one row per comparison: both medians with min and max, the ratio."""
    head = (
        "| measurement | ours | median (min-max) | peer | median (min-max) "
        "| ratio ours / peer | runs |\n|---|---|---|---|---|---|---|\n"
    )
    return head + "\n".join(c.row() for c in comparisons) + "\n"


def chart(name: str, comparisons: Sequence[Comparison], *, title: str) -> str:
    """Draw the comparisons as horizontal bars (median, whiskers min to max) into
    docs/benchmarks/NAME.png and return the markdown that shows it from benchmarks.md.

    Ours in blue on top, then the peers in grey; a measurement shared by several
    comparisons (ours against two peers, several commands against one floor) gets
    one bar. matplotlib is imported here, with the Agg backend, so suites that
    draw nothing never pay for it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars: list[tuple[Measurement, bool]] = []
    for ours in (True, False):
        for comparison in comparisons:
            measurement = comparison.ours if ours else comparison.peer
            if all(measurement is not seen for seen, _ in bars):
                bars.append((measurement, ours))
    bars.reverse()  # barh draws bottom-up; the first comparison reads first
    medians = [m.median for m, _ in bars]
    whiskers = [
        [m.median - min(m.seconds) for m, _ in bars],
        [max(m.seconds) - m.median for m, _ in bars],
    ]
    figure, axes = plt.subplots(figsize=(8, 1.0 + 0.45 * len(bars)))
    try:
        axes.barh(
            range(len(bars)),  # positions, not labels: equal labels must not share a bar
            medians,
            xerr=whiskers,
            color=["#1f77b4" if ours else "#9e9e9e" for _, ours in bars],
            capsize=3,
        )
        axes.set_yticks(range(len(bars)), [m.label for m, _ in bars])
        axes.set_xlabel(f"median, whiskers min to max ({bars[0][0].unit})")
        axes.set_title(title)
        axes.set_xlim(left=0)
        figure.tight_layout()
        CHARTS.mkdir(parents=True, exist_ok=True)
        # No Software/date metadata: a rerun with the same figures writes the same bytes.
        figure.savefig(CHARTS / f"{name}.png", dpi=100, metadata={"Software": None})
    finally:
        plt.close(figure)
    return f"![{title}](benchmarks/{name}.png)"


def versions(*distributions: str) -> str:
    """``mlx-lama 0.1.0, huggingface_hub 1.2.3``: installed versions, for a section's footer."""
    found = []
    for name in distributions:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            engine = engine_version(name)  # an engine in its own environment
            found.append(f"{name} {engine}" if engine else f"{name} (not installed)")
    return ", ".join(found)


def engine_version(name: str) -> str | None:
    """The version of engine ``name`` where mlx-lama finds it (its own environment)."""
    from mlx_lama.backends.base import backend_names, get_backend

    if name not in backend_names():
        return None
    return get_backend(name).detect(services=False).version


def isolated_env(root: Path) -> dict[str, str]:
    """This environment without the developer's Hugging Face and mlx-lama settings, with
    all state (HOME, MLX_LAMA_HOME, HF_HOME; offline) under ``root``, folders created."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env.setdefault(ENGINES_ENV, str(engines_dir()))  # engines installed in their own envs
    env.update(layout(root))
    for name in ("HOME", "HF_HUB_CACHE", "MLX_LAMA_HOME"):
        Path(env[name]).mkdir(parents=True, exist_ok=True)
    return env


def shown(argv: Sequence[str], root: Path | None = None) -> str:
    """``argv`` as a reader would type it: ``python`` and ``hf`` rather than this
    venv's full paths, ``$TMP`` for the suite's temporary folder ``root``."""
    venv = Path(sys.executable).parent
    words = []
    for arg in argv:
        word = arg
        if arg == sys.executable:
            word = "python"
        elif Path(arg).parent == venv:
            word = Path(arg).name
        if root is not None:
            word = word.replace(str(root), "$TMP")
        words.append(word if word and " " not in word else shlex.quote(word))
    return " ".join(words)


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
