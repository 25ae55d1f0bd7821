"""``mlx-lama list`` against ``hf cache ls`` and ``python -m mlx_lm manage --scan``:
wall time to list a Hugging Face cache of 100 repos.

The cache and project are bench/reconcile.py's converged project (100 cached
repos, 50 of them in the manifest and lock), built under a temporary folder
that is removed at the end. Every command is a real subprocess, offline, with
HF_HOME and MLX_LAMA_HOME under that folder; each is first checked to list all
100 repos. ``mlx_lm manage`` lists only repos whose id contains ``--pattern``
(default ``mlx``), so it gets ``--pattern ''``: every repo. Nothing here touches
the network or the developer's ~/.mlx-lama and ~/.cache.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.reconcile import CACHED, CLI, MODELS, build
from bench.report import (
    Comparison,
    chart,
    comparison_table,
    machine,
    shown,
    time_command,
    versions,
    write_section,
)

SLOW_RUNS = 5  # mlx_lm imports mlx and transformers first: seconds per run here


def main(runs: int = 15) -> None:
    root = Path(tempfile.mkdtemp(prefix="mlx-lama-bench-list-"))
    try:
        manifest, env = build(root)
        commands = [
            ("mlx-lama list", [*CLI, "list", "-f", str(manifest)], runs),
            ("hf cache ls", [str(Path(sys.executable).parent / "hf"), "cache", "ls"], runs),
            (
                "mlx_lm manage --scan",
                [sys.executable, "-m", "mlx_lm", "manage", "--scan", "--pattern", ""],
                min(runs, SLOW_RUNS),
            ),
        ]
        last = f"bench-org/model-{CACHED - 1:03d}"
        for label, argv, _ in commands:
            done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0 or last not in done.stdout:
                raise SystemExit(f"{label} did not list the cache:\n{done.stdout}{done.stderr}")
        ours, *peers = (time_command(label, argv, env, n) for label, argv, n in commands)
        comparisons = [Comparison(f"list {CACHED} cached repos", ours, peer) for peer in peers]
        write_section("list", render(comparisons, [shown(a, root) for _, a, _ in commands]))
        for measurement in [ours, *peers]:
            print(measurement.line())
    finally:
        shutil.rmtree(root, ignore_errors=True)


def render(comparisons: list[Comparison], commands: list[str]) -> str:
    picture = chart("list", comparisons, title=f"List a cache of {CACHED} repos")
    shown_commands = "; ".join(f"`{c}`" for c in commands)
    return f"""## `mlx-lama list` vs `hf cache ls` and `mlx_lm manage --scan`

A Hugging Face cache of {CACHED} small repos, {MODELS} of them also in the
manifest and lock (the converged project of the start-up section). Each command
is a fresh process, offline, started from bytecode, and prints every repo.
`mlx-lama list` also reads the manifest and lock, and marks which cached repos
it uses; `hf cache ls` scans the cache; `mlx_lm manage --scan` scans it with
huggingface_hub's `scan_cache_dir` after importing mlx_lm (fewer runs: it takes
seconds).

{comparison_table(comparisons)}
{picture}

Commands: {shown_commands}.
Versions: {versions("mlx-lama", "huggingface_hub", "mlx-lm")}.
Machine: {machine()}.
Command: `uv run --all-extras python -m bench list`
"""
