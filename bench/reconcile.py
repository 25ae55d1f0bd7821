"""CLI wall time of ``plan`` and ``list`` on a realistic project: 50 manifest models,
100 repos in the Hugging Face cache, a lock that matches (a converged machine).

Each command runs as a real subprocess with its own MLX_LAMA_HOME and HF cache
under a temporary folder. ``plan`` is timed warm (manifest unchanged since the
last run, the common case) and cold (first run after an edit: validation with
pydantic). Python's own start-up (``python -c pass``) is the floor.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.fixtures.hf_cache import place_in_cache

from bench.report import Measurement, machine, time_command, write_section
from mlx_lama.orchestrator.cache import scan_cache
from mlx_lama.schema.lockfile import Lock, LockedModel, write_lock

MODELS = 50
CACHED = 100
TARGET = 0.3
CLI = [sys.executable, "-m", "mlx_lama"]


def build(root: Path) -> tuple[Path, dict[str, str]]:
    """The project folder and the environment that points every command at it."""
    env = {
        **os.environ,
        "MLX_LAMA_HOME": str(root / "home"),
        "HF_HOME": str(root / "hf"),
        "HF_HUB_CACHE": str(root / "hf" / "hub"),
        "HF_HUB_OFFLINE": "1",
    }
    source = root / "model"
    source.mkdir()
    (source / "config.json").write_text('{"model_type": "llama"}')
    (source / "model.safetensors").write_bytes(b"\0" * 4096)
    (source / "tokenizer.json").write_text("{}")
    (source / "tokenizer_config.json").write_text("{}")
    cache = root / "hf" / "hub"
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
        memo = root / "home" / "cache"

        def forget() -> None:
            shutil.rmtree(memo, ignore_errors=True)

        results = [
            time_command("python -c pass (floor)", [sys.executable, "-c", "pass"], env, runs),
            time_command("mlx-lama --help", [*CLI, "--help"], env, runs),
            time_command("mlx-lama plan (manifest unchanged)", plan, env, runs, target=TARGET),
            time_command("mlx-lama list (manifest unchanged)", listing, env, runs, target=TARGET),
            time_command(
                "mlx-lama plan (first run after an edit)", plan, env, runs, before_each=forget
            ),
        ]
        write_section("reconcile", render(results))
        for result in results:
            print(result.line())
    finally:
        shutil.rmtree(root, ignore_errors=True)


def render(results: list[Measurement]) -> str:
    rows = "\n".join(r.row() for r in results)
    return f"""## `plan` and `list` wall time

{MODELS} manifest models, {CACHED} repos in the Hugging Face cache, lock matching
(a converged machine: `plan` prints `No changes.`). Each command is a fresh
process; {results[0].runs} runs each. Target: under {TARGET} s.

| command | median | min | max | target |
|---|---|---|---|---|
{rows}

How to read it: the floor is the interpreter's own start-up. "Manifest
unchanged" is the everyday case: the validated manifest is remembered by
content hash, so pydantic is not imported at all. "First run after an edit"
pays for validating with pydantic (its import alone is about 0.2 s here).

Machine: {machine()}.
Command: `uv run --all-extras python -m bench reconcile`
"""
