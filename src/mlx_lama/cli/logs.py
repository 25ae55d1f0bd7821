"""``mlx-lama logs [MODEL]``: a model server's log, or the daemon's own.

Servers write to ``~/.mlx-lama/logs/<name>.log`` (``orchestrator/process.py``)
and ``mlx-lama serve`` to ``logs/daemon.log``; this command only reads those
files. ``--follow`` keeps printing what is appended, like ``tail -f``, and
starts over when the file is truncated or replaced (a restarted server, a
rotated daemon log). ``-f`` stays the manifest option, as on every verb.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, BinaryIO

import typer

from mlx_lama.cli._app import app
from mlx_lama.cli._common import ManifestFile, handles_errors
from mlx_lama.errors import MlxLamaError

DAEMON_LOG = "daemon.log"
Follow = Annotated[bool, typer.Option("--follow", help="Keep printing lines as they are written.")]
Tail = Annotated[
    int,
    typer.Option("-n", "--tail", help="Start with the last N lines (0: none).", min=0, metavar="N"),
]
POLL_SECONDS = 0.2
CHUNK = 64 * 1024


@app.command()
@handles_errors
def logs(
    model: Annotated[
        str | None,
        typer.Argument(
            help="Model (a manifest name or alias); none: the daemon's log.",
            metavar="[MODEL]",
            show_default=False,
        ),
    ] = None,
    follow: Follow = False,
    lines: Tail = 100,
    file: ManifestFile = None,
) -> None:
    """Show a model server's log, or the daemon's with no MODEL.

    With --follow, lines are printed as they are written until Ctrl-C.
    """
    path = log_file(model, file)
    if not path.is_file():
        message, hint = _no_log(model, path)
        raise MlxLamaError(message, hint=hint)
    try:
        with path.open("rb") as handle:
            out = sys.stdout.buffer
            out.write(last_lines(handle, lines))
            out.flush()
            if follow:
                follow_file(path, handle, out.write, out.flush)
    except KeyboardInterrupt:  # the way to leave --follow, as with tail -f
        sys.stdout.flush()
        raise typer.Exit(0) from None


def log_file(model: str | None, manifest_file: Path | None) -> Path:
    """The log of ``model`` as the manifest names it (an alias or ``name:latest``
    finds its model), or the daemon's log when ``model`` is None."""
    from mlx_lama import paths

    if model is None:
        return paths.logs_dir() / DAEMON_LOG
    from mlx_lama.orchestrator.process import log_path_for

    return log_path_for(_server_name(model, manifest_file))


def _server_name(model: str, manifest_file: Path | None) -> str:
    """The manifest key ``model`` means (as ``run`` resolves it: a model, an alias,
    ``name:latest``, a repo id a model uses); a name the manifest does not know
    is used as it is, since a removed model's server may have left a log."""
    from mlx_lama.cli.run import manifest_key
    from mlx_lama.registry import UnknownModelError
    from mlx_lama.schema import find_manifest, load_manifest

    manifest = load_manifest(find_manifest(manifest_file).path)
    try:
        return manifest_key(manifest, model) or model
    except UnknownModelError:
        return model


def _no_log(model: str | None, path: Path) -> tuple[str, str]:
    """Why there is nothing to show, and what to do."""
    if model is None:
        return f"no daemon log yet at {path}", "the daemon writes it once `mlx-lama serve` runs"
    return (
        f"no log for {model!r} at {path}",
        "a model's server writes it when it starts; `mlx-lama list` shows the models",
    )


def last_lines(handle: BinaryIO, count: int) -> bytes:
    """The last ``count`` lines of the file (all of it when shorter), read from the
    end in chunks so a large log costs only what is shown; leaves the handle at
    the end of the file."""
    end = handle.seek(0, 2)
    if count == 0:
        return b""
    position, data = end, b""
    # One more newline than lines wanted: a complete last line ends with one.
    while position > 0 and data.count(b"\n") <= count:
        step = min(CHUNK, position)
        position -= step
        handle.seek(position)
        data = handle.read(step) + data
    handle.seek(end)
    tail = data.splitlines(keepends=True)[-count:]
    return b"".join(tail)


def follow_file(
    path: Path,
    handle: BinaryIO,
    write: Callable[[bytes], object],
    flush: Callable[[], None],
    *,
    poll: float = POLL_SECONDS,
    keep_going: Callable[[], bool] = lambda: True,
) -> None:
    """Write what is appended to ``path`` from ``handle``'s position on, until
    ``keep_going()`` is false. A file that shrinks (truncated) is read again from
    its start; one replaced by a new file (another inode) is reopened. The handle
    (or its successor) is closed on the way out."""
    found = _identity(path)
    identity = found[0] if found else None
    try:
        while keep_going():
            data = handle.read(CHUNK)
            if data:
                write(data)
                flush()
                continue
            time.sleep(poll)
            now = _identity(path)
            if now is None:
                continue  # removed: wait for it to come back
            if now[0] != identity:
                handle.close()
                handle = path.open("rb")
                identity = now[0]
            elif now[1] < handle.tell():
                handle.seek(0)
    finally:
        handle.close()


def _identity(path: Path) -> tuple[tuple[int, int], int] | None:
    """((device, inode), size) of ``path``, None when it does not exist."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino), stat.st_size
