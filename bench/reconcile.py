"""CLI start-up: wall time of ``--help``, ``--version``, ``plan`` and ``list`` on a
realistic project (50 manifest models, 100 repos in the Hugging Face cache, a lock
that matches: a converged machine), each against Python's own start-up
(``python -c pass``), the floor any Python CLI pays.

Each command runs as a real subprocess with its own MLX_LAMA_HOME and HF cache
under a temporary folder, removed at the end. ``plan`` is timed warm (manifest
unchanged since the last run, the common case) and cold (first run after an
edit: validation with pydantic). :func:`build` makes the project; the ``list``
suite (bench/cache_list.py) lists the same cache. Nothing here touches the
network or the developer's ~/.mlx-lama and ~/.cache.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.fixtures.hf_cache import place_in_cache

from bench.report import (
    Comparison,
    chart,
    comparison_table,
    isolated_env,
    machine,
    shown,
    time_command,
    versions,
    write_section,
)
from mlx_lama.orchestrator.cache import scan_cache
from mlx_lama.schema.lockfile import Lock, LockedModel, write_lock

MODELS = 50
CACHED = 100
TARGET = 0.3
CLI = [sys.executable, "-m", "mlx_lama"]


def build(root: Path) -> tuple[Path, dict[str, str]]:
    """The converged project's manifest under ``root``, and the environment (offline,
    all state under ``root / "state"``) that points every command at it."""
    env = isolated_env(root / "state")
    source = root / "model"
    source.mkdir()
    (source / "config.json").write_text('{"model_type": "llama"}')
    (source / "model.safetensors").write_bytes(b"\0" * 4096)
    (source / "tokenizer.json").write_text("{}")
    (source / "tokenizer_config.json").write_text("{}")
    cache = Path(env["HF_HUB_CACHE"])
    for index in range(CACHED):
        place_in_cache(source, cache, f"bench-org/model-{index:03d}")
    project = root / "project"
    project.mkdir()
    manifest = project / "mlxlama.toml"
    entries = ["version = 1\n"]
    for index in range(MODELS):
        entries.append(
            f'\n[models."m{index:02d}:7b"]\nrepo = "bench-org/model-{index:03d}"\n'
            f'serve = "never"\n[models."m{index:02d}:7b".parameters]\ntemperature = 0.{index % 9}\n'
        )
    manifest.write_text("".join(entries))
    repos, _warnings = scan_cache(cache)
    by_id = {r.repo_id: r for r in repos}
    locked = []
    for index in range(MODELS):
        repo = by_id[f"bench-org/model-{index:03d}"]
        revision = repo.revisions[0]
        locked.append(
            LockedModel(f"m{index:02d}:7b", repo.repo_id, "main", revision.commit, revision.files)
        )
    write_lock(project / "mlxlama.lock", Lock(tuple(sorted(locked, key=lambda m: m.name))))
    return manifest, env


def main(runs: int = 15) -> None:
    root = Path(tempfile.mkdtemp(prefix="mlx-lama-bench-"))
    try:
        manifest, env = build(root)
        plan = [*CLI, "plan", "-f", str(manifest), "--detailed-exitcode"]
        listing = [*CLI, "list", "-f", str(manifest)]
        check = subprocess.run(plan, env=env, capture_output=True, text=True, check=False)
        if check.returncode != 0 or check.stdout != "No changes.\n":
            raise SystemExit(f"the bench project is not converged:\n{check.stdout}{check.stderr}")
        memo = Path(env["MLX_LAMA_HOME"]) / "cache"

        def forget() -> None:
            shutil.rmtree(memo, ignore_errors=True)

        floor = time_command("python -c pass", [sys.executable, "-c", "pass"], env, runs)

        def against_floor(
            what: str,
            label: str,
            argv: list[str],
            target: float | None = None,
            before_each: Callable[[], None] | None = None,
        ) -> Comparison:
            measured = time_command(label, argv, env, runs, target=target, before_each=before_each)
            return Comparison(what, measured, floor)

        comparisons = [
            against_floor("print the help", "mlx-lama --help", [*CLI, "--help"]),
            against_floor("print the version", "mlx-lama --version", [*CLI, "--version"]),
            against_floor("plan, manifest unchanged", "mlx-lama plan", plan, TARGET),
            against_floor("list, manifest unchanged", "mlx-lama list", listing, TARGET),
            against_floor(
                "plan, first run after an edit", "mlx-lama plan (edited)", plan, None, forget
            ),
        ]
        write_section("reconcile", render(comparisons))
        for measurement in [floor, *(c.ours for c in comparisons)]:
            print(measurement.line())
    finally:
        shutil.rmtree(root, ignore_errors=True)


def render(comparisons: list[Comparison]) -> str:
    picture = chart("reconcile", comparisons, title="mlx-lama CLI wall time vs python -c pass")
    verdicts = "; ".join(
        f"{c.what}: {c.ours.median:.3f} s ({'met' if c.ours.median < TARGET else 'missed'})"
        for c in comparisons
        if c.ours.target is not None
    )
    return f"""## CLI start-up: `--help`, `--version`, `plan`, `list` against `python -c pass`

{MODELS} manifest models, {CACHED} repos in the Hugging Face cache, lock matching
(a converged machine: `plan` prints `No changes.`). Each command is a fresh
process, started from bytecode; the peer is the interpreter's own start-up, the
floor under any Python CLI, so the ratio says how many interpreter start-ups
each command costs.

{comparison_table(comparisons)}
{picture}

Target for `plan` and `list` with the manifest unchanged: under {TARGET} s
(median). {verdicts}.

How to read it: "unchanged" is the everyday case: the validated manifest is
remembered by content hash, so pydantic is not imported at all. "After an edit"
pays for validating with pydantic (its import alone is about 0.2 s here).

Commands: `{shown(CLI)} --help`, `--version`, `plan -f mlxlama.toml
--detailed-exitcode`, `list -f mlxlama.toml`; `python -c pass`.
Versions: {versions("mlx-lama", "typer", "pydantic")}.
Machine: {machine()}.
Command: `uv run --all-extras python -m bench reconcile`
"""
