"""``mlx-lama service``: the daemon as a login service, and mlx-lama installed as a tool.

The systemd unit and the launchd plist are generated into a throwaway home and
checked: the unit by ``systemd-analyze verify``, the plist parsed back with
plistlib. Where a systemd user session exists, the unit is installed for real under
a name of its own, answers ``/api/version`` and is removed; elsewhere (containers,
CI) that test is skipped with the reason. launchd's commands are checked against a
stand-in ``launchctl`` that records them (there is no Mac here).
"""

from __future__ import annotations

import json
import os
import plistlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mlx_lama import loginservice, paths
from mlx_lama.loginservice import Launchd, SystemdUser, definition, launchd_plist, systemd_unit
from mlx_lama.orchestrator.daemonfile import daemon_file
from tests.fixtures import hf_env
from tests.fixtures.cli import cli
from tests.fixtures.gateway import reap_servers, wait_for
from tests.fixtures.servers import free_port, start_server

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "mlxlama.toml.example"


def test_the_unit_runs_this_python_on_the_global_manifest_and_verifies(tmp_path: Path) -> None:
    code, out, err = cli("service", "install", "--print")
    assert code == 0, err
    home = paths.home().absolute()
    assert (home / "mlxlama.toml").is_file()  # the global manifest, created valid and empty
    lines = out.splitlines()
    assert f'ExecStart="{sys.executable}" "-m" "mlx_lama" "serve" "-f" "{home}/mlxlama.toml"' in (
        lines
    )
    assert f'Environment="MLX_LAMA_HOME={home}"' in lines
    assert "Restart=on-failure" in lines and "KillMode=process" in lines
    assert f"StandardOutput=append:{home}/logs/daemon.log" in lines
    assert "WantedBy=default.target" in lines
    verify(tmp_path, out)


def test_odd_paths_and_passed_on_variables_are_quoted_as_systemd_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    odd = tmp_path / 'a "odd" 100% $HOME dir'
    odd.mkdir()
    manifest = odd / "mlxlama.toml"
    manifest.write_text("version = 1\n")
    monkeypatch.setenv("HF_HOME", str(odd / "hf"))
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    unit = systemd_unit(definition(manifest))
    assert (
        '"-f" "' + str(manifest).replace("%", "%%").replace("$", "$$").replace('"', '\\"') + '"'
        in unit
    )
    hf_home = str(odd / "hf").replace("%", "%%").replace('"', '\\"')
    assert f'Environment="HF_HOME={hf_home}"' in unit  # no $$: Environment= expands nothing
    assert "HF_ENDPOINT" not in unit  # only what is set is passed on
    verify(tmp_path, unit)


def verify(folder: Path, unit: str) -> None:
    """``systemd-analyze verify`` finds nothing to say about ``unit``."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here")
    path = folder / "mlx-lama.service"
    path.write_text(unit)
    done = subprocess.run(
        [analyze, "verify", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if "mlx-lama.service" in line] == []


def test_the_plist_starts_at_login_stays_alive_and_logs_under_the_home(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HOME", "/data/hf")
    manifest = paths.home() / "projects" / "mlxlama.toml"
    agent = plistlib.loads(launchd_plist(definition(manifest)))
    home = str(paths.home().absolute())
    assert agent["Label"] == "dev.mlx-lama.serve"
    assert agent["ProgramArguments"] == [
        sys.executable, "-m", "mlx_lama", "serve", "-f", str(manifest.absolute()),
    ]  # fmt: skip
    assert agent["RunAtLoad"] is True and agent["KeepAlive"] is True
    variables = agent["EnvironmentVariables"]
    assert variables["MLX_LAMA_HOME"] == home and variables["HF_HOME"] == "/data/hf"
    assert set(variables) <= {"MLX_LAMA_HOME", *loginservice.PASSED_ON}
    assert agent["StandardOutPath"] == agent["StandardErrorPath"] == f"{home}/logs/daemon.log"
    assert agent["WorkingDirectory"] == home
    assert agent["AbandonProcessGroup"] is True  # the always servers outlive a stop


def test_install_without_a_service_manager_says_how_to_see_the_file() -> None:
    if SystemdUser().missing() is None or sys.platform == "darwin":
        pytest.skip("this machine has a service manager: nothing to refuse")
    code, out, err = cli("service", "install")
    assert code == 1 and out == ""
    assert "cannot reach systemd here: no systemd user session" in err
    assert "mlx-lama service install --print" in err
    code, out, _ = cli("service", "status", "--json")
    status = json.loads(out)
    assert code == 0 and status["installed"] is False and status["running"] is False
    assert status["problem"].startswith("no systemd user session")


def test_logs_shows_the_daemons_log_the_service_writes() -> None:
    log = paths.logs_dir() / "daemon.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("first\nsecond\nthird\n")
    code, out, err = cli("service", "logs", "-n", "2")
    assert (code, out) == (0, "second\nthird\n"), err


def test_a_broken_manifest_is_refused_before_any_service_file(tmp_path: Path) -> None:
    broken = tmp_path / "mlxlama.toml"
    broken.write_text("version = 1\n[models.m]\nrepo = 3\n")
    code, out, err = cli("service", "install", "--print", "-f", str(broken))
    assert code != 0 and out == ""
    assert f"{broken}:3" in err and "models.m.repo" in err


# -- launchd, through a stand-in launchctl that records what it is asked


@pytest.fixture
def launchctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``launchctl`` on PATH that appends its arguments to calls.log; ``print`` finds
    the job only once ``bootstrap`` loaded it, and says it runs as pid 4242."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "launchctl"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {tmp_path}/calls.log\n'
        f"loaded={tmp_path}/loaded\n"
        'case "$1" in\n'
        '  bootstrap) touch "$loaded" ;;\n'
        '  bootout) rm -f "$loaded" ;;\n'
        '  print) [ -f "$loaded" ] || exit 113\n'
        '         printf "job = {\\n\\tstate = running\\n\\tpid = 4242\\n}\\n" ;;\n'
        "esac\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "calls.log"


def test_launchd_loads_the_agent_replaces_it_in_place_and_removes_it(
    tmp_path: Path, launchctl: Path
) -> None:
    agents = tmp_path / "LaunchAgents"
    manager = Launchd(folder=agents)
    service = definition(tmp_path / "mlxlama.toml")
    assert manager.missing() is None
    assert manager.status().installed is False
    assert manager.install(service) is False  # new
    plist = agents / "dev.mlx-lama.serve.plist"
    assert plistlib.loads(plist.read_bytes())["ProgramArguments"] == list(service.argv)
    status = manager.status()
    assert (status.installed, status.loaded, status.running, status.pid) == (True, True, True, 4242)
    assert manager.install(service) is True  # again: unloaded, rewritten, loaded
    assert manager.uninstall() is True and not plist.exists()
    assert manager.uninstall() is False
    domain = f"gui/{os.getuid()}"
    calls = launchctl.read_text().splitlines()
    assert [c for c in calls if not c.startswith("print")] == [
        f"bootstrap {domain} {plist}",
        f"bootout {domain}/dev.mlx-lama.serve",
        f"bootstrap {domain} {plist}",
        f"bootout {domain}/dev.mlx-lama.serve",
    ]


# -- systemd, through a stand-in systemctl that records what it is asked


@pytest.fixture
def systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``systemctl`` on PATH with a user session: it appends its arguments to
    calls.log, and ``show`` says the unit runs as pid 4242 once ``restart`` started it."""
    if sys.platform == "darwin":
        pytest.skip("macOS runs launchd, not systemd")
    folder = tmp_path / "bin"
    folder.mkdir()
    active = tmp_path / "active"
    script = folder / "systemctl"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {tmp_path}/calls.log\n'
        'case "$2" in\n'
        f"  restart) touch {active} ;;\n"
        f"  disable) rm -f {active} ;;\n"
        f"  show) if [ -f {active} ]; then\n"
        '          printf "LoadState=loaded\\nActiveState=active\\nSubState=running\\n'
        'MainPID=4242\\n"\n'
        "        else\n"
        '          printf "LoadState=not-found\\nActiveState=inactive\\nSubState=dead\\n'
        'MainPID=0\\n"\n'
        "        fi ;;\n"
        "esac\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "calls.log"


def test_systemd_install_enables_the_unit_updates_it_and_uninstall_removes_it(
    tmp_path: Path, systemctl: Path
) -> None:
    code, out, err = cli("service", "install")
    assert code == 0, err
    unit = Path(os.environ["XDG_CONFIG_HOME"]) / "systemd" / "user" / "mlx-lama.service"
    assert out.startswith(f"Installed {unit} (systemd): mlx-lama serve -f ")
    verify(tmp_path, unit.read_text())
    code, out, err = cli("service", "status", "--json")
    status = json.loads(out)
    assert (status["installed"], status["loaded"], status["running"], status["pid"]) == (
        True, True, True, 4242,
    )  # fmt: skip
    # A daemon a terminal started holds the port: installing again says so.
    with daemon_file("http://127.0.0.1:11434", paths.global_manifest()):
        code, out, err = cli("service", "install")
    assert code == 0 and out.startswith(f"Updated {unit}")
    assert f"a daemon not run by the service (pid {os.getpid()}" in err
    code, out, err = cli("service", "uninstall")
    assert code == 0 and out.startswith(f"Removed {unit}") and not unit.exists()
    assert cli("service", "uninstall")[1].startswith("No service installed")
    asked = systemctl.read_text().splitlines()
    assert "--user show-environment" in asked  # whether there is a session, first
    changes = [c for c in asked if c.split()[1] not in ("show", "show-environment")]
    assert changes == [
        "--user daemon-reload",
        "--user enable mlx-lama.service",
        "--user restart mlx-lama.service",
        "--user daemon-reload",  # installed again: rewritten in place and restarted
        "--user enable mlx-lama.service",
        "--user restart mlx-lama.service",
        "--user disable --now mlx-lama.service",
        "--user daemon-reload",
    ]


# -- the service's daemon is the daemon a terminal runs


@pytest.mark.server
def test_the_services_command_is_the_daemon_verbs_and_stops_know(
    tmp_path: Path, tiny_model: Path
) -> None:
    """What systemd or launchd would run, run here: the verbs find it, and a SIGTERM
    (all that a service stop sends it, KillMode=process) stops the on-demand server
    and leaves the always one for the next daemon to adopt."""
    port = free_port()
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(
        f"version = 1\n[server]\nport = {port}\n"
        f'[models.kept]\npath = "{tiny_model}"\nserve = "always"\n'
        f'[models.lazy]\npath = "{tiny_model}"\n'
    )
    service = definition(manifest)
    env = {**os.environ, **dict(service.environment)}
    daemon = start_server(service.argv, port=port, log_path=tmp_path / "serve.log", env=env)
    try:
        daemon.wait_ready("/api/version", 240)
        chat = {"model": "lazy", "messages": [{"role": "user", "content": "hi"}], "stream": False}
        answered = httpx.post(f"{daemon.url}/api/chat", json=chat, timeout=240)
        assert answered.status_code == 200, answered.text
        code, out, err = cli("ps", "-f", str(manifest), "--json")
        assert code == 0, err
        pids = {row["name"]: row["pid"] for row in json.loads(out) if row.get("pid")}
        assert set(pids) == {"kept", "lazy"}
        code, _, err = cli("cp", "-f", str(manifest), "kept", "kept-too")  # handed to it
        assert code == 0, err
        wait_for(
            lambda: (
                "kept-too:latest"
                in {m["name"] for m in httpx.get(f"{daemon.url}/api/tags").json()["models"]}
            ),
            60,
            "the daemon to serve the copy the verb made",
        )
        assert daemon.stop(timeout=60) == 0
        wait_for(lambda: not alive(pids["lazy"]), 30, "the on-demand server to stop")
        assert alive(pids["kept"]), "the always server stays for the next daemon to adopt"
    finally:
        daemon.stop(timeout=60)
        reap_servers(paths.home())


# -- a real systemd user session, where there is one


@pytest.mark.server
def test_the_unit_runs_the_daemon_under_systemd_and_uninstall_stops_it(tmp_path: Path) -> None:
    # The user's manager reads units from the real home, not the test's own.
    real = SystemdUser(
        folder=hf_env.REAL_HOME / ".config" / "systemd" / "user",
        unit=f"mlx-lama-test-{os.getpid()}.service",
    )
    why = real.missing()
    if why is not None:
        pytest.skip(f"no systemd user session to run the unit in: {why}")
    port = free_port()
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(f"version = 1\n[server]\nport = {port}\n")
    try:
        real.install(definition(manifest))
        deadline = time.monotonic() + 120
        answer = None
        while answer is None and time.monotonic() < deadline:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/api/version", timeout=2).json()
            except httpx.HTTPError:
                time.sleep(0.5)
        assert answer is not None and "version" in answer
        status = real.status()
        assert status.running and status.pid is not None
        pid = status.pid
    finally:
        real.uninstall()
    assert not real.file.exists()
    deadline = time.monotonic() + 60
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(pid)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- installed as a tool


@pytest.mark.server
def test_uv_tool_install_gives_a_working_mlx_lama(tmp_path: Path) -> None:
    """`uv tool install` of this checkout (from the uv cache: no network) puts an
    mlx-lama on PATH that validates the example manifest and names its engines."""
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH")
    env = {
        **os.environ,
        "UV_TOOL_DIR": str(tmp_path / "tools"),
        "UV_TOOL_BIN_DIR": str(tmp_path / "bin"),
        "UV_CACHE_DIR": real_uv_cache(uv),  # the packages the suite's own install fetched
        "UV_OFFLINE": "1",
    }
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run(
        [uv, "tool", "install", "--python", sys.executable, str(ROOT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    tool = tmp_path / "bin" / "mlx-lama"
    validated = subprocess.run(
        [str(tool), "validate", "-f", str(EXAMPLE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert validated.returncode == 0, validated.stderr
    assert validated.stdout.startswith("OK: ")
    version = subprocess.run(
        [str(tool), "--version"], env=env, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    tool_python = version.splitlines()[1].split()[1]
    assert Path(tool_python).is_relative_to(tmp_path / "tools")  # the tool's own Python
    has_engine = subprocess.run(
        [tool_python, "-c", "import mlx_lm"], capture_output=True, timeout=120, check=False
    )
    assert has_engine.returncode == 0, "the tool has the default engine, mlx-lm"


def real_uv_cache(uv: str) -> str:
    """uv's cache as the developer's (or CI's) shell has it, not the test's own home."""
    if os.environ.get("UV_CACHE_DIR"):
        return os.environ["UV_CACHE_DIR"]
    env = {
        **os.environ,
        "HOME": str(hf_env.REAL_HOME),
        "XDG_CACHE_HOME": str(hf_env.REAL_CACHE_HOME),
    }
    done = subprocess.run(
        [uv, "cache", "dir"], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()
