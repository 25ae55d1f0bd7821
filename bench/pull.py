"""``mlx-lama pull`` against ``hf download``: wall time to fetch the same repo from
the same Hub into an empty cache.

The Hub is the test stand-in (tests/fixtures/hub.py) on 127.0.0.1, serving a
random-weight llama of about 190 MB (tests/fixtures/tiny_model.py with bigger
sizes), so moving bytes dominates. Before every run, the warm-up included,
the HF cache, MLX_LAMA_HOME, the manifest and its lock start empty; after every
timed run the snapshot is checked complete (every file, its size), so a failed
download is never timed as a fast one. Both tools are real subprocesses; the
stand-in is stopped and the temporary folder removed in ``finally``. Nothing
here reaches beyond 127.0.0.1 or touches ~/.mlx-lama and ~/.cache.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from tests.fixtures.hf_cache import repo_folder
from tests.fixtures.hub import HubStandIn
from tests.fixtures.tiny_model import make_tiny_model

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

REPO = "bench-org/mid-llama"
HIDDEN, LAYERS, INTERMEDIATE = 1024, 10, 2048
MAX_RUNS = 7  # about a second each, two tools


def main(runs: int = 15) -> None:
    runs = min(runs, MAX_RUNS)
    root = Path(tempfile.mkdtemp(prefix="mlx-lama-bench-pull-"))
    hub = HubStandIn()
    try:
        source = make_tiny_model(
            root / "source",
            seed=0,
            hidden_size=HIDDEN,
            num_layers=LAYERS,
            intermediate_size=INTERMEDIATE,
            readme=False,  # mlx-lama pulls model files only: both tools fetch the same set
        )
        hub.start()
        commit = hub.add_repo(REPO, source)
        files = {path: len(data) for path, data in hub.files(REPO).items()}
        env = isolated_env(root / "state")
        env.update({"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"})
        manifest = root / "project" / "mlxlama.toml"
        manifest.parent.mkdir()
        snapshot = repo_folder(Path(env["HF_HUB_CACHE"]), REPO) / "snapshots" / commit

        def empty() -> None:
            for name in ("HF_HOME", "MLX_LAMA_HOME"):
                shutil.rmtree(env[name], ignore_errors=True)
            for name in ("HF_HUB_CACHE", "MLX_LAMA_HOME"):
                Path(env[name]).mkdir(parents=True)
            manifest.write_text("version = 1\n", encoding="utf-8")
            manifest.with_suffix(".lock").unlink(missing_ok=True)

        def landed() -> None:
            got = {p: (snapshot / p).stat().st_size for p in files if (snapshot / p).is_file()}
            if got != files:
                raise SystemExit(f"{REPO}@{commit} did not land complete in {snapshot}")

        ours_argv = [sys.executable, "-m", "mlx_lama", "pull", "-f", str(manifest), REPO]
        peer_argv = [str(Path(sys.executable).parent / "hf"), "download", REPO]
        ours, peer = (
            time_command(label, argv, env, runs, before_each=empty, after_each=landed)
            for label, argv in (("mlx-lama pull", ours_argv), ("hf download", peer_argv))
        )
        size_mb = sum(files.values()) / 1e6
        comparison = Comparison(f"download {size_mb:.0f} MB, empty cache", ours, peer)
        commands = [shown(argv, root) for argv in (ours_argv, peer_argv)]
        write_section("pull", render(comparison, size_mb, len(files), commands))
        print(ours.line())
        print(peer.line())
    finally:
        hub.stop()
        shutil.rmtree(root, ignore_errors=True)


def render(comparison: Comparison, size_mb: float, count: int, commands: list[str]) -> str:
    rates = ", ".join(
        f"{m.label} {size_mb / m.median:.0f} MB/s" for m in (comparison.ours, comparison.peer)
    )
    picture = chart("pull", [comparison], title=f"Download {size_mb:.0f} MB into an empty cache")
    layers = f"hidden size {HIDDEN}, {LAYERS} layers, intermediate size {INTERMEDIATE}"
    return f"""## `mlx-lama pull` vs `hf download`

One repo: a random-weight llama ({layers}),
{size_mb:.0f} MB in {count} files, one of them safetensors. It has no README,
as mlx-lama pulls only the files a model needs: both tools fetch the same set.
The Hub is the stand-in on 127.0.0.1 (`HF_ENDPOINT`, plain HTTP). Every run,
the warm-up included, starts from an empty Hugging Face cache and an empty
MLX_LAMA_HOME; `mlx-lama pull` also starts from a manifest with no models,
which it then edits and locks, as a user's pull does. Each run is checked
complete afterwards.

{comparison_table([comparison])}
{picture}

Throughput, median: {rates}.
The stand-in is a small Python server on the same machine, so the absolute
rates are its own, not the Hub's CDN; both tools talk to the same server, so
the ratio compares their own work: start-up, requests, writing the files and,
for mlx-lama, the manifest and lock edits.

Commands: `{commands[0]}`; `{commands[1]}`.
Versions: {versions("mlx-lama", "huggingface_hub")}.
Machine: {machine()}.
Command: `uv run --all-extras python -m bench pull`
"""
