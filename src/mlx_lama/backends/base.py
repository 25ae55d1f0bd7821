"""How a server is launched: the :class:`LaunchSpec` each engine builds from a ServerSpec.

``orchestrator/process.py`` calls :func:`launch_spec` to get the exact argv and
environment of a model server, then spawns it. Kept deliberately small: a dict
from engine name to a builder function. The full ``Backend`` interface (with
``detect()`` and ``capabilities()``) is a later issue and will grow out of this.

Pure: no I/O, no logging. Nothing here starts, probes or inspects a process.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlx_lama.errors import MlxLamaError

if TYPE_CHECKING:
    from mlx_lama.orchestrator.state import ServerSpec

# Every engine we launch reads a local folder, never the Hub: offline mode turns
# a stray download (e.g. a request naming another model) into a quick error.
BASE_ENV: tuple[tuple[str, str], ...] = (
    ("HF_HUB_OFFLINE", "1"),
    ("PYTHONUNBUFFERED", "1"),  # log lines reach the log file as they happen
)

ParameterValue = str | int | float | tuple[str, ...]


class LaunchError(MlxLamaError):
    """A server's launch command cannot be built from its manifest entry."""


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """Exactly how to start one model server and how to talk to it.

    ``env`` is added on top of the inherited environment. ``served_model`` is
    the ``model`` value requests must carry (None: leave the field out).
    ``fatal_log_markers`` are log texts that mean the engine can never become
    ready although its process lives on (mlx-lm keeps serving HTTP after its
    model failed to load), so waiting for readiness can give up early.
    """

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    host: str
    port: int
    served_model: str | None
    ready_timeout: float
    fatal_log_markers: tuple[str, ...] = ()

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` to reach the server from this machine."""
        host = client_host(self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


def client_host(host: str) -> str:
    """The address a local client connects to for a server bound to ``host``.

    A wildcard bind (``0.0.0.0``, ``::``, empty) is reached on loopback.
    """
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host.strip("[]")


def python_module(module: str, *args: str) -> tuple[str, ...]:
    """``python -m MODULE ARGS`` with this interpreter, so engines come from our env."""
    return (sys.executable, "-m", module, *args)


def format_value(value: ParameterValue) -> str:
    """A parameter as a command-line value (``0.2``, ``40``)."""
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def parameter_flags(
    parameters: Iterable[tuple[str, ParameterValue]],
    table: Sequence[tuple[str, str]],
) -> tuple[str, ...]:
    """Flags for the parameters ``table`` maps (parameter, flag), in table order.

    Parameters the engine has no flag for are left out; the gateway applies
    them per request. ``num_predict`` counts only when positive (Ollama's -1
    and -2 mean "no limit" and "fill the context": the engine default).
    """
    given = dict(parameters)
    flags: list[str] = []
    for name, flag in table:
        value = given.get(name)
        if value is None:
            continue
        if name == "num_predict" and (not isinstance(value, int) or value <= 0):
            continue
        flags += [flag, format_value(value)]
    return tuple(flags)


def check_passthrough(server: ServerSpec, managed: Sequence[str]) -> tuple[str, ...]:
    """``server.args``, refusing any that would override a flag mlx-lama manages.

    The run record must know the real host, port and model, so ``--port`` and
    friends (and any prefix argparse would expand to them) are refused.
    """
    for arg in server.args:
        name = arg.split("=", 1)[0]
        if not name.startswith("--") or len(name) <= 2:
            continue
        clash = next((flag for flag in managed if flag.startswith(name)), None)
        if clash is not None:
            raise LaunchError(
                f"server {server.name!r}: args may not set {clash} (got {arg!r}); "
                "mlx-lama sets it itself",
                hint="use the model's `port`/`path`/`repo` keys in mlxlama.toml instead",
            )
    return server.args


def required_model_path(server: ServerSpec) -> str:
    """The absolute model folder; a bare repo id is never handed to an engine."""
    if server.model_path is None:
        raise LaunchError(
            f"server {server.name!r} has no model folder yet",
            hint="run `mlx-lama apply` to pull it first",
        )
    return str(absolute(server.model_path))


def absolute(path: Path) -> Path:
    """``path`` made absolute without touching the filesystem."""
    return path.expanduser().absolute()


def merged_env(server: ServerSpec) -> tuple[tuple[str, str], ...]:
    """:data:`BASE_ENV` overlaid with the manifest's ``env`` for this server."""
    env = dict(BASE_ENV)
    env.update(server.env)
    return tuple(env.items())


def _builders() -> dict[str, Callable[[ServerSpec, int], LaunchSpec]]:
    # Imported here: the engine modules import this one.
    from mlx_lama.backends import mlx_lm, vllm_mlx

    return {"mlx-lm": mlx_lm.launch_spec, "vllm-mlx": vllm_mlx.launch_spec}


def launch_spec(server: ServerSpec, port: int) -> LaunchSpec:
    """How to start ``server`` on ``port``, for its engine. Pure: no I/O.

    Raises :class:`LaunchError` for ``external`` servers (never started by
    mlx-lama) and for entries the engine cannot run.
    """
    if server.engine == "external":
        raise LaunchError(
            f"server {server.name!r} is external: external servers are not started by mlx-lama",
            hint="start it yourself; mlx-lama only routes requests to it",
        )
    builder = _builders().get(server.engine)
    if builder is None:
        raise LaunchError(
            f"server {server.name!r}: unknown engine {server.engine!r}",
            hint="use backend type 'mlx-lm' or 'vllm-mlx' in mlxlama.toml",
        )
    return builder(server, port)
