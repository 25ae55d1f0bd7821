"""The user settings at work: config.yaml's default_backend and default_port applied to
manifests (loader, desired state, plan, port choice), their errors, and `mlx-lama config`.

No engine is started: the planner, ``desired()`` and ``launch_spec`` show what would run.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlx_lama.backends.base import launch_spec
from mlx_lama.cli import app
from mlx_lama.config import load_settings, user_defaults
from mlx_lama.errors import ConfigError, ManifestError
from mlx_lama.orchestrator import process
from mlx_lama.orchestrator.desired import desired
from mlx_lama.orchestrator.plan import make_plan
from mlx_lama.orchestrator.state import ObservedState, ServerSpec
from mlx_lama.schema import editor, load_manifest, parse_manifest
from mlx_lama.schema.lockfile import Lock
from mlx_lama.schema.manifest import Manifest

runner = CliRunner()

# A model with no backend and no port, one with both, one never served.
MANIFEST = """\
version = 1

[models."tiny:1"]
path = "./models/tiny"
serve = "always"

[models."pinned:1"]
path = "./models/pinned"
backend = "mlx-lm"
port = 8101

[models."kept:1"]
path = "./models/kept"
serve = "never"
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("MLX_LAMA_HOME", str(home))
    return home


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    return folder


def _config(home: Path, text: str) -> Path:
    path = home / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _manifest(project: Path, text: str = MANIFEST) -> Path:
    path = project / "mlxlama.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _desired(manifest: Manifest, project: Path) -> dict[str, ServerSpec]:
    state = desired(manifest, Lock(), manifest_dir=project, cache_dir=project / "cache")
    return {server.name: server for server in state.servers}


# --- nothing set: today's behaviour, exactly ---------------------------------------------


def test_without_settings_nothing_changes(home: Path, project: Path) -> None:
    manifest = load_manifest(_manifest(project))
    assert manifest == parse_manifest(MANIFEST, str(project / "mlxlama.toml"))
    assert (manifest.user_backend, manifest.user_port) == (None, None)
    assert manifest.backend_of("tiny:1") == "mlx-lm"
    assert not manifest.backend_from_user("tiny:1")
    server = _desired(manifest, project)["tiny:1"]
    assert (server.engine, server.port, server.first_port, server.taken_ports) == (
        "mlx-lm",
        None,
        None,
        (),
    )
    plan = make_plan(
        desired(manifest, Lock(), manifest_dir=project, cache_dir=project), ObservedState()
    )
    assert plan.notes == ()


def test_a_file_that_sets_the_built_in_values_only_shows_them(home: Path) -> None:
    _config(home, "default_backend: mlx-lm\n")
    settings = load_settings()
    assert settings.user_backend == "mlx-lm"
    assert settings.user_port is None  # not set: servers keep taking any free port
    assert settings.source_of("default_port") == "built-in"


# --- default_backend ----------------------------------------------------------------------


def test_default_backend_runs_a_model_that_names_none_on_it(home: Path, project: Path) -> None:
    _config(home, "default_backend: vllm-mlx\n")
    manifest = load_manifest(_manifest(project))
    assert manifest.backend_of("tiny:1") == "vllm-mlx"
    assert manifest.backend_from_user("tiny:1")
    assert manifest.backend_of("pinned:1") == "mlx-lm"  # its own backend wins
    assert not manifest.backend_from_user("pinned:1")
    servers = _desired(manifest, project)
    assert (servers["tiny:1"].backend, servers["tiny:1"].engine) == ("vllm-mlx", "vllm-mlx")
    assert servers["pinned:1"].engine == "mlx-lm"
    argv = launch_spec(servers["tiny:1"], 8123).argv
    assert "--served-model-name" in argv  # vllm-mlx's flag; mlx-lm's server has none
    assert "--cache-memory-mb" in argv
    assert "--prompt-cache-bytes" not in argv


def test_the_plan_says_which_backends_come_from_the_user_settings(
    home: Path, project: Path
) -> None:
    _config(home, "default_backend: vllm-mlx\n")
    manifest = load_manifest(_manifest(project))
    state = desired(manifest, Lock(), manifest_dir=project, cache_dir=project / "cache")
    rendered = make_plan(state, ObservedState()).render()
    assert (
        "note: models kept:1, tiny:1: backend vllm-mlx, the default_backend of this machine's "
        "user settings (the manifest names none; `mlx-lama config` shows where it is set)"
    ) in rendered.splitlines()
    assert "pinned:1" not in rendered.split("note:", 1)[1]


def test_the_environment_beats_the_file(
    home: Path, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _config(home, "default_backend: vllm-mlx\n")
    monkeypatch.setenv("MLX_LAMA_DEFAULT_BACKEND", "mlx-lm")
    manifest = load_manifest(_manifest(project))
    assert _desired(manifest, project)["tiny:1"].engine == "mlx-lm"
    assert load_settings().source_of("default_backend") == (
        "environment variable MLX_LAMA_DEFAULT_BACKEND"
    )


_EVERY_MODEL_NAMES_ITS_BACKEND = MANIFEST.replace(
    'serve = "always"\n', 'serve = "always"\nbackend = "mlx-lm"\n'
).replace('serve = "never"\n', 'serve = "never"\nbackend = "mlx-lm"\n')


@pytest.mark.parametrize(
    "source",
    [MANIFEST + '\n[defaults]\nbackend = "mlx-lm"\n', _EVERY_MODEL_NAMES_ITS_BACKEND],
    ids=["defaults", "model"],
)
def test_the_manifest_beats_the_settings(
    home: Path, project: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    _config(home, "default_backend: external\n")
    monkeypatch.setenv("MLX_LAMA_DEFAULT_BACKEND", "vllm-mlx")
    manifest = load_manifest(_manifest(project, source))
    assert {manifest.backend_of(name) for name in manifest.models} == {"mlx-lm"}
    assert not any(manifest.backend_from_user(name) for name in manifest.models)
    state = desired(manifest, Lock(), manifest_dir=project, cache_dir=project)
    assert not any("default_backend" in note for note in state.notes)


def test_validation_follows_the_user_backend(home: Path, project: Path) -> None:
    """With default_backend external, a model that names no backend is external: it
    needs a url, as if the manifest said so; and the memo of a load under other
    settings does not hide that."""
    path = _manifest(project)
    _config(home, "default_backend: vllm-mlx\n")
    assert load_manifest(path).backend_of("tiny:1") == "vllm-mlx"  # valid, remembered
    _config(home, "default_backend: external\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert "tiny:1" in str(info.value)
    assert "an external model needs a url" in str(info.value)
    (home / "config.yaml").unlink()
    assert load_manifest(path).backend_of("tiny:1") == "mlx-lm"
    assert load_manifest(path).user_backend is None


def test_a_remembered_manifest_gets_todays_settings(home: Path, project: Path) -> None:
    path = _manifest(project)
    assert load_manifest(path).backend_of("tiny:1") == "mlx-lm"  # validated and remembered
    _config(home, "default_port: 8100\n")
    manifest = load_manifest(path)  # the same bytes, from the memo
    assert manifest.user_port == 8100
    assert _desired(manifest, project)["tiny:1"].first_port == 8100


def test_an_edit_returns_the_manifest_with_the_settings(home: Path, project: Path) -> None:
    path = _manifest(project)
    _config(home, "default_backend: vllm-mlx\n")
    manifest = editor.set_model_fields(path, "kept:1", {"serve": "on-demand"})
    assert manifest.serve_mode("kept:1") == "on-demand"
    assert manifest.backend_of("kept:1") == "vllm-mlx"
    assert load_manifest(path) == manifest


# --- default_port -------------------------------------------------------------------------


def test_default_port_is_where_servers_without_a_port_start_looking(
    home: Path, project: Path
) -> None:
    _config(home, "default_port: 8100\n")
    manifest = load_manifest(_manifest(project))
    servers = _desired(manifest, project)
    tiny, pinned = servers["tiny:1"], servers["pinned:1"]
    assert (tiny.port, tiny.first_port, tiny.taken_ports) == (None, 8100, (8101, 11434))
    assert (pinned.port, pinned.first_port) == (8101, None)  # its own port wins
    # Where the search starts is no launch setting: it restarts nothing.
    assert tiny.spec_hash == _desired(parse_manifest(MANIFEST), project)["tiny:1"].spec_hash
    state = desired(manifest, Lock(), manifest_dir=project, cache_dir=project)
    assert state.notes == (
        "model tiny:1: the first free port from 8100, the default_port of this machine's "
        "user settings (the manifest gives none)",
    )


def _free_run(length: int) -> int:
    """A port P with P .. P+length-1 all free on 127.0.0.1 now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            start = int(probe.getsockname()[1])
        if start + length > 65535:
            continue
        if all(process._bindable("127.0.0.1", start + i) for i in range(length)):
            return start
    raise AssertionError("no run of free ports")


@pytest.fixture
def fresh_hand_outs() -> Iterator[None]:
    process._HANDED_OUT.clear()
    yield
    process._HANDED_OUT.clear()


def _spec(first_port: int | None, taken: tuple[int, ...] = ()) -> ServerSpec:
    return ServerSpec(
        name="tiny:1",
        model="tiny:1",
        backend="mlx-lm",
        engine="mlx-lm",
        serve="always",
        model_path=Path("/models/tiny"),
        first_port=first_port,
        taken_ports=taken,
    )


@pytest.mark.usefixtures("home", "fresh_hand_outs")
def test_choose_port_takes_the_first_free_port_from_default_port() -> None:
    start = _free_run(5)
    assert process.choose_port(_spec(start)) == start
    # Handed out a moment ago (not bound yet): the next start looks further.
    assert process.choose_port(_spec(start)) == start + 1
    process._HANDED_OUT.clear()
    with socket.socket() as listener:  # someone listens on it
        listener.bind(("127.0.0.1", start))
        listener.listen()
        assert process.choose_port(_spec(start, taken=(start + 1, start + 2))) == start + 3


@pytest.mark.usefixtures("home", "fresh_hand_outs")
def test_without_default_port_any_free_port_is_taken() -> None:
    port = process.choose_port(_spec(None))
    assert 1 <= port <= 65535
    assert process._HANDED_OUT == {}


# --- errors ---------------------------------------------------------------------------------


def test_a_bad_value_is_named_with_file_line_and_fix(home: Path) -> None:
    path = _config(home, "# my settings\ndefault_backend: vllm-mlx\ndefault_port: abc\n")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value) == (
        f"{path}:3: default_port: 'abc' is not a port number "
        f"(set it to a port number from 1 to 65535 in {path})"
    )
    assert info.value.exit_code == 2


def test_every_bad_value_is_listed(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _config(home, "default_backend: vllm\n\ndefault_port: 0\n")
    monkeypatch.setenv("MLX_LAMA_DEFAULT_PORT", "x")
    with pytest.raises(ConfigError) as info:
        load_settings()
    lines = str(info.value).splitlines()
    assert lines[0] == "3 problems in the user settings:"
    assert lines[1] == (
        f"  {path}:1: default_backend: unknown backend 'vllm'; did you mean 'vllm-mlx'? "
        f"(set it to one of mlx-lm, vllm-mlx, external in {path})"
    )
    assert lines[2].startswith(f"  {path}:3: default_port: 0 is out of range")
    assert lines[3] == (
        "  MLX_LAMA_DEFAULT_PORT='x': 'x' is not a port number "
        "(set MLX_LAMA_DEFAULT_PORT to a port number from 1 to 65535, or unset it)"
    )


def test_an_unknown_key_names_its_line_and_the_likely_key(home: Path) -> None:
    path = _config(home, "default_backend: mlx-lm\ndefault_prot: 9000\n")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith(
        f"{path}:2: unknown setting 'default_prot'; did you mean 'default_port'?"
    )


def test_a_broken_config_stops_only_what_relies_on_it(home: Path, project: Path) -> None:
    _config(home, "default_port: abc\n")
    assert user_defaults().error is not None
    # Every model names its backend and port (or is never served): nothing relies on it.
    independent = _manifest(
        project,
        'version = 1\n[models."pinned:1"]\npath = "./m"\nbackend = "mlx-lm"\nport = 8101\n'
        '[models."kept:1"]\npath = "./k"\nbackend = "mlx-lm"\nserve = "never"\n',
    )
    assert load_manifest(independent).backend_of("pinned:1") == "mlx-lm"
    # A server without a port would be placed by default_port: the error says why.
    relying = _manifest(project)
    with pytest.raises(ConfigError, match=r"config\.yaml:1: default_port: 'abc'"):
        load_manifest(relying)


# --- the CLI --------------------------------------------------------------------------------


def test_config_command_shows_values_and_sources(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "SETTING           VALUE           SOURCE     USED FOR",
        "default_backend   mlx-lm          built-in   backend of models whose entry and "
        "[defaults] name none",
        "default_port      any free port   built-in   first port tried for model servers "
        "without a port",
    ]
    path = _config(home, "\ndefault_backend: vllm-mlx\n")
    monkeypatch.setenv("MLX_LAMA_DEFAULT_PORT", "8100")
    result = runner.invoke(app, ["config", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["file"] == str(path)
    assert [(r["setting"], r["value"], r["source"]) for r in data["settings"]] == [
        ("default_backend", "vllm-mlx", f"{path}:2"),
        ("default_port", 8100, "environment variable MLX_LAMA_DEFAULT_PORT"),
    ]


def test_config_command_reports_a_broken_file_as_a_usage_error(home: Path) -> None:
    path = _config(home, "default_port: abc\n")
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"error: {path}:1: default_port: 'abc' is not a port number "
        f"(set it to a port number from 1 to 65535 in {path})\n"
    )


def test_validate_fails_cleanly_when_the_manifest_needs_a_broken_setting(
    home: Path, project: Path
) -> None:
    path = _config(home, "default_backend: olama\n")
    result = runner.invoke(app, ["validate", "-f", str(_manifest(project))])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {path}:1: default_backend: unknown backend 'olama'")
    assert "Traceback" not in result.output
