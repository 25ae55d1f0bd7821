"""``mlx-lama pull MODEL...``: download models and add them to the manifest.

Each name is resolved as ``ollama pull`` would find it here: a manifest model,
an alias, or a Hugging Face repo id. The files are downloaded first, with
progress, and only a complete download is written into the manifest and its
commit into mlxlama.lock. A new entry is served on demand, as after ``ollama
pull`` (and ``/api/pull`` here): the daemon starts it on its first request.
``--serve never`` keeps it on disk only, ``--serve always`` keeps it running. Downloads run
outside the apply lock, so several ``pull`` commands download at once; each
takes the lock only for its short manifest edit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

from mlx_lama.cli._app import app
from mlx_lama.cli._common import ManifestFile, handles_errors, plural
from mlx_lama.errors import MlxLamaError

if TYPE_CHECKING:
    from mlx_lama.cli._progress import ApplyReporter
    from mlx_lama.orchestrator.apply import Outcome
    from mlx_lama.orchestrator.entries import PullSource
    from mlx_lama.schema.manifest import ServeMode

PARALLEL_PULLS = 4
SERVE_MODES = ("on-demand", "always", "never")


@app.command()
@handles_errors
def pull(
    models: Annotated[
        list[str],
        typer.Argument(
            help="Models to pull: names, aliases or repo ids.",
            metavar="MODEL...",
            show_default=False,
        ),
    ],
    serve: Annotated[
        str | None,
        typer.Option(
            "--serve",
            help="How a model new to the manifest is served: on-demand (the default, "
            "started by its first request), always, or never (on disk only).",
            metavar="MODE",
            show_default=False,
        ),
    ] = None,
    file: ManifestFile = None,
) -> None:
    """Download models and add them to the manifest.

    MODEL is a manifest model or alias, a built-in alias (`mlx-lama aliases`)
    or a Hugging Face repo id such as mlx-community/Llama-3.2-1B-Instruct-4bit.
    A model new to the manifest is added once its files are complete, served on
    demand as after `ollama pull` (--serve never: on disk only); pulling one
    already there fetches its revision again, updates mlxlama.lock and leaves
    its entry as it is. Several pulls may run at once.
    """
    from mlx_lama.errors import UsageError
    from mlx_lama.schema import find_manifest

    if serve is not None and serve not in SERVE_MODES:
        raise UsageError(
            f"--serve {serve!r} is not a way to serve a model",
            hint=f"use one of: {', '.join(SERVE_MODES)}",
        )
    pull_models(find_manifest(file).path, models, serve=cast("ServeMode | None", serve))


def pull_models(
    manifest_path: Path, names: Sequence[str], *, serve: ServeMode | None = None
) -> list[str]:
    """Download ``names`` and record them in the manifest at ``manifest_path`` (a new
    entry gets ``serve``, when given; else the manifest's default, on demand) and its
    lock; then let the running daemon, or an apply of just these models, act on the
    change. Returns their manifest names,
    in order. Raises MlxLamaError when a name is unknown or a download fails; the
    models that did download are recorded all the same."""
    from mlx_lama.cli._handoff import settle
    from mlx_lama.cli._progress import ApplyReporter
    from mlx_lama.cli._workspace import quiet_hub_logging
    from mlx_lama.orchestrator.apply import run_interruptibly
    from mlx_lama.orchestrator.entries import pull_source
    from mlx_lama.schema import load_manifest

    manifest = load_manifest(manifest_path)
    sources = list(
        {source.key: source for source in (pull_source(manifest, n) for n in names)}.values()
    )
    quiet_hub_logging()
    with ApplyReporter() as reporter:
        tasks = [_puller(manifest_path, source, serve, reporter) for source in sources]
        outcomes = run_interruptibly(tasks, PARALLEL_PULLS)
    failed = [o for o in outcomes if not o.ok]
    done = [s.key for s, o in zip(sources, outcomes, strict=True) if o.ok]
    if done:
        settle(manifest_path, done)
    if failed:
        raise MlxLamaError(
            f"{plural(len(failed), 'pull')} failed: "
            + "; ".join(f"{o.action.target}: {o.detail}" for o in failed)
        )
    return [s.key for s in sources]


def _puller(
    manifest_path: Path, source: PullSource, serve: ServeMode | None, reporter: ApplyReporter
) -> Callable[[], Outcome]:
    """One model's pull as a task: resolve, download, record."""
    from mlx_lama import paths
    from mlx_lama.humanize import size_str
    from mlx_lama.orchestrator import pull
    from mlx_lama.orchestrator.apply import Outcome
    from mlx_lama.orchestrator.entries import record_pull
    from mlx_lama.orchestrator.plan import Action, ActionKind
    from mlx_lama.orchestrator.projects import project_key

    action = Action(ActionKind.PULL, source.key, "pull", model=source.key, repo=source.repo)

    def work() -> str:
        fields = {"serve": serve} if serve is not None and source.existing is None else None
        if source.repo is None:  # a local folder or an external server: nothing to fetch
            record_pull(manifest_path, source, None)
            return "nothing to download"
        locked = pull.fetch(
            source.repo,
            source.revision,
            name=source.key,
            cache_dir=paths.hf_hub_cache(),
            project=project_key(manifest_path),
            progress=lambda done, total: reporter.progress(action, done, total),
        )
        record_pull(manifest_path, source, locked, fields=fields)
        return f"{source.repo}@{locked.commit[:12]}, {size_str(locked.size)}"

    def task() -> Outcome:
        reporter.started(action)
        try:
            outcome = Outcome(action, True, work())
        except MlxLamaError as error:
            outcome = Outcome(action, False, str(error))
        reporter.finished(outcome)
        return outcome

    return task
