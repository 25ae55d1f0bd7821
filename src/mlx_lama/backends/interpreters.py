"""Which Python runs an engine, and the program it runs there.

An engine runs either in mlx-lama's own environment (``sys.executable``, the
default engine mlx-lm is installed with mlx-lama) or in an environment of its
own under ``MLX_LAMA_HOME/engines/NAME`` (``$MLX_LAMA_ENGINES`` moves the
folder), where ``mlx-lama install`` puts heavy engines such as vllm-mlx: they
bring PyTorch and pin their own mlx-lm, and upgrading or removing one never
changes another's packages. :func:`engine_python` finds such an environment,
:func:`install_commands` makes one.

Either way the interpreter runs ``python -c engine_main(MODULE)`` rather than
``python -m MODULE`` (:func:`engine_program`), which prepares two things first:

* mlx_lm.server listens with the stdlib's default queue of 5 connections: of a
  burst of more (agents sending at once), Linux drops the rest (their clients try
  again after 1 s) and macOS refuses them. ``request_queue_size`` (a documented
  attribute of ``socketserver.TCPServer``) deepens it.
* Nothing the MLX engines do needs PyTorch, yet transformers imports it whenever
  it is installed (vllm-mlx brings it): seconds of each start and ~600 MB of each
  engine's memory. A None entry in ``sys.modules`` (the import system's documented
  way to block a module) makes transformers see no torch. A model whose own code
  needs it (a tokenizer with remote code) gets it back with ``TORCH_ENV=1`` in its
  ``env``.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

from mlx_lama import paths

LISTEN_QUEUE = 1024  # the kernel caps it (Linux somaxconn 4096, macOS 128)
TORCH_ENV = "MLX_LAMA_ENGINE_TORCH"
ENGINES_ENV = "MLX_LAMA_ENGINES"  # where engine environments live, instead of HOME/engines


_PREPARE = (
    "import os, runpy, socketserver, sys; "
    f"os.environ.get('{TORCH_ENV}') == '1' or sys.modules.setdefault('torch', None); "
    f"socketserver.TCPServer.request_queue_size = {LISTEN_QUEUE}; "
)


def engine_main(module: str) -> str:
    """The ``python -c`` program that runs engine ``module`` as ``python -m`` would,
    prepared as the module docstring says."""
    return _PREPARE + f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"


def engine_script(path: Path) -> str:
    """The ``python -c`` program that runs the program file ``path`` (one of ours that
    an engine environment runs without mlx-lama installed in it), prepared the same way."""
    return _PREPARE + f"runpy.run_path({str(path)!r}, run_name='__main__')"


def engine_program(argv: tuple[str, ...]) -> tuple[str, ...]:
    """``argv`` of ``PYTHON -m MODULE ...`` (this interpreter or an engine
    environment's) as ``PYTHON -c engine_main(MODULE) ...``, and of ``PYTHON FILE.py
    ...`` as ``PYTHON -c engine_script(FILE.py) ...``; any other command as it is."""
    if len(argv) < 2 or not Path(argv[0]).name.startswith("python"):
        return argv
    if len(argv) >= 3 and argv[1] == "-m":
        return (argv[0], "-c", engine_main(argv[2]), *argv[3:])
    if argv[1].endswith(".py"):
        return (argv[0], "-c", engine_script(Path(argv[1])), *argv[2:])
    return argv


def python_module(module: str, *args: str, python: str | None = None) -> tuple[str, ...]:
    """``PYTHON -m MODULE ARGS``: this interpreter unless ``python`` names another."""
    return (python or sys.executable, "-m", module, *args)


# -- engine environments


def engines_dir() -> Path:
    """Where engine environments live: ``$MLX_LAMA_ENGINES``, else ``HOME/engines``."""
    configured = os.environ.get(ENGINES_ENV)
    return Path(configured).expanduser() if configured else paths.home() / "engines"


def environment_of(engine: str) -> Path:
    """The folder of ``engine``'s own environment (which may not exist)."""
    return engines_dir() / engine


def _interpreter(environment: Path) -> Path:
    return environment / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def engine_python(engine: str, module: str) -> str | None:
    """The interpreter of ``engine``'s own environment when there is one that can
    import ``module``, else None. Asked of that interpreter (tens of ms) once per
    state of its site-packages, not at each plan and start."""
    environment = environment_of(engine)
    python = _interpreter(environment)
    if not python.is_file():
        return None
    return str(python) if _imports(str(python), module, _packages_stamp(environment)) else None


def _packages_stamp(environment: Path) -> float:
    """When the environment's packages last changed: an install, upgrade or removal
    changes its site-packages folder."""
    folders = [*environment.glob("lib/python*/site-packages"), environment / "Lib/site-packages"]
    return max((f.stat().st_mtime for f in folders if f.is_dir()), default=0.0)


@functools.lru_cache(maxsize=32)
def _imports(python: str, module: str, stamp: float) -> bool:
    del stamp  # part of the cache key only
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    try:
        done = subprocess.run([python, "-c", probe], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def installed_version(python: str, distribution: str) -> str | None:
    """The version of ``distribution`` in the environment of ``python``."""
    probe = f"import importlib.metadata as m; print(m.version({distribution!r}))"
    try:
        done = subprocess.run(
            [python, "-c", probe], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


# MLX's own library comes in a package of its own off macOS (mlx[cpu] on Linux, as
# mlx-lama's own dependencies install it); an engine's environment needs it too.
PLATFORM_REQUIREMENTS = ("mlx[cpu]",) if sys.platform == "linux" else ()


def install_commands(engine: str, distribution: str, *, upgrade: bool) -> list[list[str]]:
    """The commands that make ``engine``'s own environment (with this Python's version)
    and install ``distribution`` into it: uv when it is on PATH, else venv and pip."""
    environment = environment_of(engine)
    wanted = [distribution, *PLATFORM_REQUIREMENTS]
    python = str(_interpreter(environment))
    uv = shutil.which("uv")
    fresh = not _interpreter(environment).is_file()
    commands: list[list[str]] = []
    if uv is not None:
        if fresh:
            commands.append([uv, "venv", "--python", sys.executable, str(environment)])
        # --compile-bytecode: compiled once here, not at each engine start (pip does it too)
        flags = ["--compile-bytecode", *(["--upgrade"] if upgrade else [])]
        commands.append([uv, "pip", "install", "--python", python, *flags, *wanted])
        return commands
    if fresh:
        commands.append([sys.executable, "-m", "venv", str(environment)])
    commands.append([python, "-m", "pip", "install", *(["--upgrade"] if upgrade else []), *wanted])
    return commands


def remove_environment(engine: str) -> Path:
    """Delete ``engine``'s own environment (what ``mlx-lama install`` made); its folder.
    Raises MlxLamaError when there is none, or while a process runs from it (a server
    would lose its files under it)."""
    import psutil

    from mlx_lama.errors import MlxLamaError

    environment = environment_of(engine)
    if not (environment / "pyvenv.cfg").is_file():
        raise MlxLamaError(
            f"{engine} has no environment of its own at {environment}",
            hint="mlx-lama install puts vllm-mlx and mlx-embeddings there; "
            "mlx-lm comes with mlx-lama",
        )
    inside = str(environment.absolute()) + os.sep  # as launched: its python is a symlink
    users = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        command = process.info.get("cmdline") or []
        if command and str(Path(command[0]).absolute()).startswith(inside):
            users.append(process.info["pid"])
    if users:
        raise MlxLamaError(
            f"{engine}'s environment is in use by process {', '.join(map(str, sorted(users)))}",
            hint="stop the servers that run on it first (mlx-lama stop MODEL, or the daemon)",
        )
    shutil.rmtree(environment)
    return environment
