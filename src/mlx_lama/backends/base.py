"""The engine contract: :class:`Backend`, and the :class:`LaunchSpec` each engine builds.

``orchestrator/process.py`` calls :func:`launch_spec` to get the exact argv and
environment of a model server, then spawns it. Each engine (``mlx_lm.py``,
``vllm_mlx.py``, ``external.py``) is a :class:`Backend` registered by name: how it
is found (a service, its own environment, a package here, a binary; see
``interpreters.py``), what it can do (:class:`Capabilities`), and how it is
launched. ``mlx-lama run`` without a daemon generates in its own process through
:meth:`Backend.load_session` (``generation.py``).

Nothing here starts a process; detection probes ports and asks an engine
environment's Python whether it has the engine.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import socket
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, TypeVar

from mlx_lama.backends.generation import (
    GenerationChunk,
    InProcessModel,
    InProcessUnsupportedError,
)
from mlx_lama.backends.interpreters import (
    engine_python,
    install_commands,
    installed_version,
    python_module,
)
from mlx_lama.backends.spec import ParameterValue
from mlx_lama.errors import MlxLamaError

if TYPE_CHECKING:
    from mlx_lama.backends.spec import ServerSpec

# Every engine we launch reads a local folder, never the Hub: offline mode turns
# a stray download (e.g. a request naming another model) into a quick error.
BASE_ENV: tuple[tuple[str, str], ...] = (
    ("HF_HUB_OFFLINE", "1"),
    ("PYTHONUNBUFFERED", "1"),  # log lines reach the log file as they happen
)


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
    ``concurrency`` is how many requests the engine takes at once (None: as
    many as arrive); the gateway holds the rest until one finishes. ``answers``
    is what the engine is asked to show it is ready and alive: a one-token chat
    completion, or an embedding for an engine that only embeds.
    """

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    host: str
    port: int
    served_model: str | None
    ready_timeout: float
    fatal_log_markers: tuple[str, ...] = ()
    concurrency: int | None = None
    answers: Literal["chat", "embedding"] = "chat"

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


def launch_spec(server: ServerSpec, port: int) -> LaunchSpec:
    """How to start ``server`` on ``port``, for its engine. Pure: no I/O.

    Raises :class:`LaunchError` for ``external`` servers (never started by
    mlx-lama) and for entries the engine cannot run.
    """
    return get_backend(server.engine).serve(server, port)


# -- the interface --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an engine can serve."""

    chat: bool = True
    completion: bool = True
    embeddings: bool = False
    vision: bool = False
    continuous_batching: bool = False
    adapters: bool = False
    distributed: bool = False
    structured_output: bool = False  # answers constrained to JSON or a JSON schema

    def names(self) -> list[str]:
        """The capabilities it has, as their field names."""
        return [name for name in self.__dataclass_fields__ if getattr(self, name)]


FoundBy = Literal["service", "environment", "package", "binary"]


@dataclass(frozen=True, slots=True)
class Detection:
    """Whether an engine is here, and how it was found."""

    available: bool
    found_by: FoundBy | None = None
    version: str | None = None
    detail: str = ""  # the module, the environment's python, the binary, or the address


class Backend(ABC):
    """One engine. Subclasses set the class attributes and register themselves."""

    name: ClassVar[str]
    #: Importable modules that must all be present to launch the engine.
    python_packages: ClassVar[tuple[str, ...]] = ()
    #: The distribution whose version is reported, and what `install` installs.
    distribution: ClassVar[str | None] = None
    #: Executables that run the engine when its package is not importable here.
    binary_names: ClassVar[tuple[str, ...]] = ()
    #: Ports where a running instance usually answers (its defaults).
    service_ports: ClassVar[tuple[int, ...]] = ()
    #: ``python -m`` arguments that start the server, and the same for the binary.
    module_command: ClassVar[tuple[str, ...]] = ()
    binary_command: ClassVar[tuple[str, ...]] = ()
    #: A program file of mlx-lama's that the engine's Python runs instead of a module
    #: (an engine without a server of its own; mlx-lama is not installed beside it).
    program_file: ClassVar[Path | None] = None
    #: ``mlx-lama install`` puts it in an environment of its own (interpreters.py)
    #: rather than mlx-lama's.
    own_environment: ClassVar[bool] = False
    #: It keeps the KV caches of the prompts it saw (``kv_cache`` bounds them).
    kv_caches: ClassVar[bool] = True

    @abstractmethod
    def capabilities(self) -> Capabilities: ...

    @abstractmethod
    def serve(self, server: ServerSpec, port: int) -> LaunchSpec:
        """The command that serves ``server`` on ``port``. Pure."""

    def load_session(
        self, model_path: Path, adapter: Path | None = None, *, template: str | None = None
    ) -> InProcessModel:
        """Load ``model_path`` (with a LoRA ``adapter`` and a chat ``template`` when
        given) into this process, for ``run`` without a daemon. Engines that cannot
        raise :class:`InProcessUnsupportedError`."""
        raise InProcessUnsupportedError(self.name)

    def generate(
        self,
        model_path: Path,
        *,
        messages: Sequence[Mapping[str, str]] | None = None,
        prompt: str | None = None,
        parameters: Mapping[str, ParameterValue] | None = None,
        adapter: Path | None = None,
    ) -> Iterator[GenerationChunk]:
        """Load the model and stream one answer (see :meth:`load_session`)."""
        session = self.load_session(model_path, adapter)
        try:
            yield from session.generate(messages=messages, prompt=prompt, parameters=parameters)
        finally:
            session.close()

    def package_present(self) -> bool:
        """Every Python package this engine needs is importable here (no import)."""
        return bool(self.python_packages) and all(
            _module_present(module) for module in self.python_packages
        )

    def binary(self) -> str | None:
        """The first of :attr:`binary_names` on PATH."""
        return next((p for n in self.binary_names if (p := shutil.which(n))), None)

    def environment_python(self) -> str | None:
        """The interpreter of this engine's own environment, when it has one with the
        engine in it (``mlx-lama install``)."""
        if not self.python_packages:
            return None
        return engine_python(self.name, self.python_packages[0])

    def launchable(self) -> bool:
        """mlx-lama can start this engine: from mlx-lama's environment, from its own,
        or as a binary on PATH."""
        return (
            self.package_present()
            or self.environment_python() is not None
            or self.binary() is not None
        )

    def detect(self, *, services: bool = True, probe_timeout: float = 0.2) -> Detection:
        """Find the engine: a running service, then its own environment, then the
        package in mlx-lama's, then a binary."""
        if services:
            for port in self.service_ports:
                if _answers("127.0.0.1", port, probe_timeout):
                    return Detection(True, "service", None, f"127.0.0.1:{port}")
        python = self.environment_python()
        if python is not None:
            version = installed_version(python, self.distribution) if self.distribution else None
            return Detection(True, "environment", version, python)
        if self.package_present():
            module = self.python_packages[0]
            return Detection(True, "package", self.version(), module)
        binary = self.binary()
        if binary is not None:
            return Detection(True, "binary", None, binary)
        return Detection(False)

    def version(self) -> str | None:
        if self.distribution is None:
            return None
        import importlib.metadata  # only `backends` asks; it reads every dist-info

        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return None

    def install_commands(self, *, upgrade: bool = False) -> list[list[str]]:
        """The commands that install this engine: into an environment of its own
        (``own_environment``), else into mlx-lama's. None to run for an engine
        without a package."""
        if self.distribution is None:
            return []
        if self.own_environment:
            return install_commands(self.name, self.distribution, upgrade=upgrade)
        flags = ["--upgrade"] if upgrade else []
        uv = shutil.which("uv")
        if uv is not None:
            return [[uv, "pip", "install", "--python", sys.executable, *flags, self.distribution]]
        return [[sys.executable, "-m", "pip", "install", *flags, self.distribution]]

    def launcher(self, server: ServerSpec, *args: str) -> tuple[str, ...]:
        """The server command with ``args``: ``python -m`` (or ``python PROGRAM_FILE``)
        with the interpreter of the engine's own environment, else with this one when
        the package is here, else the engine's binary on PATH.

        Raises :class:`BackendMissingError` (naming the install command) when neither is.
        """
        python = self.environment_python() or (sys.executable if self.package_present() else None)
        if python is not None:
            if self.program_file is not None:
                return (python, str(self.program_file), *args)
            return python_module(*self.module_command, *args, python=python)
        binary = self.binary()
        if binary is not None:
            return (binary, *self.binary_command, *args)
        raise BackendMissingError(self.name, [server.name])


class BackendMissingError(LaunchError):
    """Models need an engine that is not installed here."""

    def __init__(self, backend: str, models: Sequence[str]) -> None:
        names = ", ".join(sorted(models))
        super().__init__(
            f"the {backend} backend is not installed, and {names} "
            f"{'uses' if len(models) == 1 else 'use'} it",
            hint=f"run `mlx-lama install {backend}`",
        )


_BACKENDS: dict[str, type[Backend]] = {}
_MODULES = {
    "mlx-lm": "mlx_lama.backends.mlx_lm",
    "vllm-mlx": "mlx_lama.backends.vllm_mlx",
    "mlx-embeddings": "mlx_lama.backends.mlx_embeddings",
    "external": "mlx_lama.backends.external",
}

B = TypeVar("B", bound=type[Backend])


def register_backend(cls: B) -> B:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    _BACKENDS[cls.name] = cls
    return cls


def get_backend(name: str) -> Backend:
    """The backend called ``name``, loading its module on first use."""
    if name not in _BACKENDS and name in _MODULES:
        importlib.import_module(_MODULES[name])
    cls = _BACKENDS.get(name)
    if cls is None:
        raise LaunchError(
            f"unknown backend {name!r}",
            hint=f"use one of {', '.join(backend_names())}",
        )
    return cls()


def known_backend(name: str) -> bool:
    """Whether ``name`` is one of the engines here (registered, or loaded on first use)."""
    return name in _BACKENDS or name in _MODULES


def backend_names() -> list[str]:
    return sorted({*_MODULES, *_BACKENDS})


def missing_backends(uses: Mapping[str, Sequence[str]]) -> BackendMissingError | None:
    """For ``{engine: [models]}``, the error for the first engine that cannot be
    launched here (:meth:`Backend.launchable`), or None."""
    for engine in sorted(uses):
        if engine == "external":
            continue
        backend = get_backend(engine)
        if not backend.launchable():
            return BackendMissingError(engine, uses[engine])
    return None


def _module_present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent that fails, or a blocked module
        return False


def _answers(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
