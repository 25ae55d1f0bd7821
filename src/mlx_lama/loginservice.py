"""The daemon as a login service: a launchd agent on macOS, a systemd user unit on Linux.

:func:`definition` says what the service runs: ``mlx-lama serve -f MANIFEST`` with
this very interpreter (the tool's own, never a ``PATH`` guess), the environment the
user's commands share with it (``MLX_LAMA_HOME``, and the Hugging Face and engine
variables that are set), its output appended to ``logs/daemon.log`` (what
``mlx-lama logs`` reads). :func:`launchd_plist` and :func:`systemd_unit` write that
down for each service manager; :class:`Launchd` and :class:`SystemdUser` install,
remove and inspect it through ``launchctl`` and ``systemctl --user``.

Stopping the service sends SIGTERM to the daemon only (systemd ``KillMode=process``,
launchd ``AbandonProcessGroup``), which stops the on-demand servers and leaves the
``serve = "always"`` ones running for the next daemon to adopt, as a Ctrl-C does.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mlx_lama import paths
from mlx_lama.atomic import atomic_write_bytes
from mlx_lama.errors import MlxLamaError

LABEL = "dev.mlx-lama.serve"  # the launchd label
UNIT = "mlx-lama.service"  # the systemd user unit
DAEMON_LOG = "daemon.log"
# Variables the service gets from the shell that installs it, when set there: where
# mlx-lama keeps its state and engines, and where Hugging Face keeps models.
PASSED_ON = ("MLX_LAMA_ENGINES", "HF_HOME", "HF_HUB_CACHE", "HF_ENDPOINT")
RESTART_SECONDS = 2
COMMAND_TIMEOUT = 30.0


class ServiceError(MlxLamaError):
    """The login service cannot be installed, removed or asked about here."""


@dataclass(frozen=True, slots=True)
class Definition:
    """What the service runs, with what, and where its output goes."""

    argv: tuple[str, ...]
    environment: tuple[tuple[str, str], ...]
    log_path: Path
    working_dir: Path
    manifest: Path


def definition(manifest: Path, environ: Mapping[str, str] | None = None) -> Definition:
    """The service of the daemon for ``manifest``, run by this interpreter."""
    environ = os.environ if environ is None else environ
    home = paths.home().absolute()
    manifest = manifest.expanduser().absolute()
    environment = [("MLX_LAMA_HOME", str(home))]
    environment += [(name, environ[name]) for name in PASSED_ON if environ.get(name)]
    return Definition(
        argv=(sys.executable, "-m", "mlx_lama", "serve", "-f", str(manifest)),
        environment=tuple(environment),
        log_path=home / "logs" / DAEMON_LOG,
        working_dir=home,
        manifest=manifest,
    )


def launchd_plist(service: Definition) -> bytes:
    """The launchd agent (``~/Library/LaunchAgents/LABEL.plist``): started at login,
    started again whenever it exits."""
    agent = {
        "Label": LABEL,
        "ProgramArguments": list(service.argv),
        "EnvironmentVariables": dict(service.environment),
        "WorkingDirectory": str(service.working_dir),
        "StandardOutPath": str(service.log_path),
        "StandardErrorPath": str(service.log_path),
        "RunAtLoad": True,
        "KeepAlive": True,
        "ThrottleInterval": RESTART_SECONDS * 5,  # launchd's floor is 10 s anyway
        "AbandonProcessGroup": True,  # the serve = "always" servers outlive a stop
        "ProcessType": "Interactive",  # not throttled as a background job: it answers users
    }
    return plistlib.dumps(agent, sort_keys=False)


def systemd_unit(service: Definition) -> str:
    """The systemd user unit (``~/.config/systemd/user/mlx-lama.service``)."""
    environment = "\n".join(
        f"Environment={_quoted(f'{name}={value}')}" for name, value in service.environment
    )
    command = " ".join(_quoted(arg.replace("$", "$$")) for arg in service.argv)
    log = _literal(str(service.log_path))
    return (
        "[Unit]\n"
        "Description=mlx-lama: the Ollama-compatible gateway for MLX models\n"
        "\n"
        "[Service]\n"
        "Type=exec\n"
        f"ExecStart={command}\n"
        f"{environment}\n"
        f"WorkingDirectory={_literal(str(service.working_dir))}\n"
        "Restart=on-failure\n"
        f"RestartSec={RESTART_SECONDS}\n"
        "KillMode=process\n"
        "TimeoutStopSec=60\n"
        f"StandardOutput=append:{log}\n"
        f"StandardError=append:{log}\n"
        "\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


def _literal(text: str) -> str:
    """``text`` with systemd's specifiers (``%h``, ...) made literal."""
    return text.replace("%", "%%")


def _quoted(text: str) -> str:
    """One quoted word of a systemd command line or assignment (``$`` is the caller's:
    ExecStart expands variables, Environment does not)."""
    inner = _literal(text).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{inner}"'


@dataclass(frozen=True, slots=True)
class Status:
    """What the service manager says about the service."""

    manager: str  # "launchd" or "systemd"
    file: Path
    installed: bool  # its file is there
    loaded: bool  # the manager knows it
    running: bool
    pid: int | None = None
    detail: str = ""  # the manager's own word for its state
    problem: str | None = None  # why the manager cannot be reached here (``missing``)


class Manager(Protocol):
    """A service manager mlx-lama can install the daemon into."""

    name: str
    file: Path

    def text(self, service: Definition) -> bytes: ...
    def missing(self) -> str | None: ...
    def install(self, service: Definition) -> bool: ...
    def uninstall(self) -> bool: ...
    def status(self) -> Status: ...


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ServiceError(f"`{' '.join(argv)}` failed: {error}") from None


def _checked(argv: Sequence[str]) -> str:
    done = _run(argv)
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip()
        raise ServiceError(f"`{' '.join(argv)}` failed: {said or f'exit code {done.returncode}'}")
    return done.stdout


class SystemdUser:
    """A systemd user unit, run by ``systemctl --user`` (the user's own manager)."""

    name = "systemd"

    def __init__(self, folder: Path | None = None, unit: str = UNIT) -> None:
        config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        self.folder = folder or Path(config) / "systemd" / "user"
        self.unit = unit
        self.file = self.folder / unit

    def text(self, service: Definition) -> bytes:
        return systemd_unit(service).encode()

    def missing(self) -> str | None:
        if shutil.which("systemctl") is None:
            return "systemctl is not on PATH"
        done = _run(["systemctl", "--user", "show-environment"])
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines()
            return f"no systemd user session ({said[0] if said else 'systemctl --user failed'})"
        return None

    def install(self, service: Definition) -> bool:
        """Write the unit (atomically), enable it, and (re)start it; whether it was
        there before."""
        existed = self.file.is_file()
        service.log_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.file, self.text(service))
        _checked(["systemctl", "--user", "daemon-reload"])
        _checked(["systemctl", "--user", "enable", self.unit])
        _checked(["systemctl", "--user", "restart", self.unit])
        return existed

    def uninstall(self) -> bool:
        """Stop and disable it, and remove the unit; whether there was one."""
        if not self.file.is_file():
            return False
        _run(["systemctl", "--user", "disable", "--now", self.unit])
        self.file.unlink()
        _checked(["systemctl", "--user", "daemon-reload"])
        return True

    def status(self) -> Status:
        installed = self.file.is_file()
        why = self.missing()
        if why is not None:
            return Status(self.name, self.file, installed, False, False, problem=why)
        fields = "LoadState,ActiveState,SubState,MainPID"
        shown = _run(["systemctl", "--user", "show", self.unit, "-p", fields]).stdout
        values = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
        pid = int(values.get("MainPID") or 0) or None
        active = values.get("ActiveState", "")
        return Status(
            self.name,
            self.file,
            installed,
            loaded=values.get("LoadState") == "loaded",
            running=active == "active" and pid is not None,
            pid=pid,
            detail=f"{active} ({values.get('SubState', '?')})" if active else "",
        )


class Launchd:
    """A launchd agent in the user's GUI session (``launchctl ... gui/UID``)."""

    name = "launchd"

    def __init__(self, folder: Path | None = None, label: str = LABEL) -> None:
        self.folder = folder or Path.home() / "Library" / "LaunchAgents"
        self.label = label
        self.file = self.folder / f"{label}.plist"
        self.domain = f"gui/{os.getuid()}"

    def text(self, service: Definition) -> bytes:
        return launchd_plist(service)

    def missing(self) -> str | None:
        if shutil.which("launchctl") is None:
            return "launchctl is not on PATH"
        return None

    def install(self, service: Definition) -> bool:
        """Write the plist (atomically) and load it, replacing a loaded one; whether
        it was there before."""
        existed = self.file.is_file()
        service.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._loaded():
            _checked(["launchctl", "bootout", f"{self.domain}/{self.label}"])
        atomic_write_bytes(self.file, self.text(service))
        _checked(["launchctl", "bootstrap", self.domain, str(self.file)])
        return existed

    def uninstall(self) -> bool:
        if not self.file.is_file():
            return False
        if self._loaded():
            _checked(["launchctl", "bootout", f"{self.domain}/{self.label}"])
        self.file.unlink()
        return True

    def _loaded(self) -> bool:
        return _run(["launchctl", "print", f"{self.domain}/{self.label}"]).returncode == 0

    def status(self) -> Status:
        installed = self.file.is_file()
        why = self.missing()
        if why is not None:
            return Status(self.name, self.file, installed, False, False, problem=why)
        done = _run(["launchctl", "print", f"{self.domain}/{self.label}"])
        if done.returncode != 0:
            return Status(self.name, self.file, installed, False, False)
        values: dict[str, str] = {}
        for line in done.stdout.splitlines():
            key, sep, value = line.strip().partition(" = ")
            if sep and key in ("state", "pid"):
                values.setdefault(key, value.strip())
        pid = int(values["pid"]) if values.get("pid", "").isdigit() else None
        state = values.get("state", "")
        return Status(self.name, self.file, installed, True, state == "running", pid, state)


def manager_here() -> Manager:
    """This machine's service manager: launchd on macOS, systemd elsewhere."""
    return Launchd() if sys.platform == "darwin" else SystemdUser()
