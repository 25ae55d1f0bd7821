"""``mlx-lama launch TOOL``: the settings each agent gets, ``--config``'s merges, and runs.

The pure settings are checked on literals against what each tool documents
(Claude Code's ANTHROPIC_* variables, Codex's TOML config and ``-c`` overrides,
OpenCode's JSON config). ``--config`` is run through the CLI with HOME,
CODEX_HOME, CLAUDE_CONFIG_DIR and XDG_CONFIG_HOME under ``tmp_path``, and the
files it writes are parsed back. The runs use a stand-in agent on PATH, a
script that records its argv and environment, against a real daemon: one
already running, and one ``launch`` starts itself (stopped by PID here).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import tomllib
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from mlx_lama.cli._agents import (
    AGENTS,
    Endpoint,
    claude_env,
    codex_overrides,
    drop_legacy_codex_profile,
    launch_command,
)
from mlx_lama.schema import load_manifest
from tests.conftest import PublishedRepo
from tests.fixtures.cli import cli
from tests.fixtures.gateway import gateway_process, reap_servers
from tests.fixtures.servers import free_port

KEY = "s3cret-key"
MODEL_VARIABLES = (
    "ANTHROPIC_MODEL",
    "ANTHROPIC_DEFAULT_OPUS_MODEL",
    "ANTHROPIC_DEFAULT_SONNET_MODEL",
    "ANTHROPIC_DEFAULT_HAIKU_MODEL",
    "CLAUDE_CODE_SUBAGENT_MODEL",
)


@pytest.fixture(autouse=True)
def agent_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The agents' own variables unset: their files are found under the test's HOME."""
    for name in ("CLAUDE_CONFIG_DIR", "CODEX_HOME", "OPENCODE_CONFIG_CONTENT", "MLX_LAMA_HOST"):
        monkeypatch.delenv(name, raising=False)


def manifest(tmp_path: Path, *, server: str = "", models: tuple[str, ...] = ("tiny",)) -> Path:
    """A manifest of ``path`` models (folders that exist, so nothing is pulled)."""
    text = "version = 1\n\n"
    if server:
        text += f"[server]\n{server}\n\n"
    for name in models:
        folder = tmp_path / "models" / name
        folder.mkdir(parents=True, exist_ok=True)
        text += f'[models.{name}]\npath = "{folder}"\n\n'
    path = tmp_path / "mlxlama.toml"
    path.write_text(text)
    return path


def home() -> Path:
    return Path(os.environ["HOME"])


def deep_update(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict):
            deep_update(into.setdefault(key, {}), value)
        else:
            into[key] = value


# -- the settings, on literals -------------------------------------------------------------


def test_claude_gets_the_gateway_root_a_token_and_the_model_for_every_kind() -> None:
    env = claude_env(Endpoint("http://127.0.0.1:11434", "tiny"))
    assert env == {
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:11434",  # Claude Code appends /v1/messages
        "ANTHROPIC_AUTH_TOKEN": "mlx-lama",
        "ANTHROPIC_API_KEY": "",
        **dict.fromkeys(MODEL_VARIABLES, "tiny"),
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    assert claude_env(Endpoint("http://h:1", "m", KEY))["ANTHROPIC_AUTH_TOKEN"] == KEY


def test_codex_overrides_are_key_equals_toml_value() -> None:
    args = codex_overrides(Endpoint("http://127.0.0.1:8080", "tiny", KEY))
    assert args[0::2] == ["-c"] * (len(args) // 2)
    merged: dict[str, Any] = {}
    for override in args[1::2]:
        deep_update(merged, tomllib.loads(override))  # Codex reads a -c value as TOML
    assert merged == {
        "model_provider": "mlx-lama",
        "model": "tiny",
        "model_providers": {
            "mlx-lama": {
                "name": "mlx-lama",
                "base_url": "http://127.0.0.1:8080/v1",
                "wire_api": "responses",
                "env_key": "MLX_LAMA_API_KEY",
            }
        },
    }


def test_opencode_run_config_is_merged_over_the_users_inline_config() -> None:
    theirs = json.dumps({"theme": "dark", "provider": {"other": {"npm": "x"}}})
    argv, env = launch_command(
        AGENTS["opencode"],
        Endpoint("http://127.0.0.1:9", "tiny"),
        ["run", "hi"],
        {"OPENCODE_CONFIG_CONTENT": theirs},
    )
    assert argv == ["opencode", "run", "hi"]
    content = json.loads(env["OPENCODE_CONFIG_CONTENT"])
    assert content["theme"] == "dark"
    assert content["provider"]["other"] == {"npm": "x"}
    assert content["provider"]["mlx-lama"] == {
        "npm": "@ai-sdk/openai-compatible",
        "name": "mlx-lama",
        "options": {"baseURL": "http://127.0.0.1:9/v1"},
        "models": {"tiny": {"name": "tiny"}},
    }
    assert content["model"] == "mlx-lama/tiny"


def test_only_our_legacy_codex_profile_is_dropped() -> None:
    text = (
        "# mine\n"
        'profile = "mlx-lama"\n'
        'model = "gpt-5"  # keep\n\n'
        '[profiles.mlx-lama]\nmodel = "old"\n\n'
        '[profiles.other]\nmodel = "o3"\n'
    )
    assert drop_legacy_codex_profile(text) == (
        '# mine\nmodel = "gpt-5"  # keep\n\n[profiles.other]\nmodel = "o3"\n'
    )


# -- --config ------------------------------------------------------------------------------


def test_config_claude_writes_the_env_into_settings_json(tmp_path: Path) -> None:
    path = manifest(tmp_path, server="port = 11500")
    code, out, err = cli("launch", "claude", "--config", "-f", str(path))
    assert (code, err) == (0, "")
    settings_path = home() / ".claude" / "settings.json"
    assert f"wrote {settings_path}" in out
    assert "claude" in out and "mlx-lama launch claude" in out
    settings = json.loads(settings_path.read_text())
    assert settings == {
        "env": {
            "ANTHROPIC_BASE_URL": "http://127.0.0.1:11500",
            "ANTHROPIC_AUTH_TOKEN": "mlx-lama",
            "ANTHROPIC_API_KEY": "",
            **dict.fromkeys(MODEL_VARIABLES, "tiny"),
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        }
    }


def test_config_claude_keeps_other_settings_and_backs_up_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "claude-config"
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(folder))
    folder.mkdir()
    old = {
        "permissions": {"allow": ["Bash(npm test)"]},
        "env": {"FOO": "bar", "ANTHROPIC_MODEL": "claude-sonnet-4-5"},
        "model": "opus",
    }
    old_text = json.dumps(old, indent=4) + "\n"
    (folder / "settings.json").write_text(old_text)
    path = manifest(tmp_path, server=f'api_key = "{KEY}"')
    code, out, _err = cli("launch", "claude", "--config", "-f", str(path))
    assert code == 0
    settings = json.loads((folder / "settings.json").read_text())
    assert list(settings) == ["permissions", "env", "model"]
    assert settings["permissions"] == old["permissions"] and settings["model"] == "opus"
    assert settings["env"]["FOO"] == "bar"
    assert settings["env"]["ANTHROPIC_MODEL"] == "tiny"
    assert settings["env"]["ANTHROPIC_AUTH_TOKEN"] == KEY
    assert not (home() / ".claude").exists()
    backup = Path(re.findall(r"the old file is in (\S+)\)", out)[0])
    assert backup.read_text() == old_text
    # Again: nothing changes, so no second backup.
    code, out, _err = cli("launch", "claude", "--config", "-f", str(path))
    assert code == 0 and "already up to date" in out
    assert len(list(backup.parent.iterdir())) == 1


def test_config_codex_writes_a_profile_file(tmp_path: Path) -> None:
    path = manifest(tmp_path, server=f'host = "0.0.0.0"\nport = 11600\napi_key = "{KEY}"')
    code, out, err = cli("launch", "codex", "--config", "-f", str(path))
    assert (code, err) == (0, "")
    profile = home() / ".codex" / "mlx-lama.config.toml"
    assert f"wrote {profile}" in out and "codex --profile mlx-lama" in out
    assert tomllib.loads(profile.read_text()) == {
        "model": "tiny",
        "model_provider": "mlx-lama",
        "model_providers": {
            "mlx-lama": {
                "name": "mlx-lama",
                "base_url": "http://127.0.0.1:11600/v1",  # a wildcard bind is reached on loopback
                "wire_api": "responses",
                "env_key": "MLX_LAMA_API_KEY",  # the key itself stays out of the file
            }
        },
    }
    assert KEY not in profile.read_text()
    assert not (home() / ".codex" / "config.toml").exists()


def test_config_codex_keeps_comments_and_other_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    codex_home = tmp_path / "codex-home"
    monkeypatch.setenv("CODEX_HOME", str(codex_home))
    codex_home.mkdir()
    config = (
        "# my codex\n"
        'model = "gpt-5"\n\n'
        "[profiles.mlx-lama] # left by an older setup\n"
        'model = "old"\n\n'
        "[mcp_servers.docs]\n"
        'command = "docs-mcp"  # keep me\n'
    )
    (codex_home / "config.toml").write_text(config)
    (codex_home / "mlx-lama.config.toml").write_text(
        '# tuned by hand\nmodel_reasoning_effort = "high"\nmodel = "older"\n'
    )
    path = manifest(tmp_path, server=f'api_key = "{KEY}"')
    code, out, _err = cli("launch", "codex", "--config", "-f", str(path))
    assert code == 0
    assert (codex_home / "config.toml").read_text() == (
        '# my codex\nmodel = "gpt-5"\n\n[mcp_servers.docs]\ncommand = "docs-mcp"  # keep me\n'
    )
    text = (codex_home / "mlx-lama.config.toml").read_text()
    assert text.startswith("# tuned by hand\n")
    profile = tomllib.loads(text)
    assert profile["model_reasoning_effort"] == "high"
    assert profile["model"] == "tiny"
    assert profile["model_providers"]["mlx-lama"]["env_key"] == "MLX_LAMA_API_KEY"
    assert "MLX_LAMA_API_KEY" in out
    assert out.count("the old file is in") == 2


def test_config_opencode_merges_into_opencode_json(tmp_path: Path) -> None:
    config_path = Path(os.environ["XDG_CONFIG_HOME"]) / "opencode" / "opencode.json"
    config_path.parent.mkdir(parents=True)
    config_path.write_text(
        json.dumps({"theme": "tokyonight", "provider": {"ollama": {"npm": "x"}}, "model": "a/b"})
    )
    path = manifest(tmp_path, server=f'api_key = "{KEY}"')
    code, _out, _err = cli("launch", "opencode", "--config", "-f", str(path))
    assert code == 0
    config = json.loads(config_path.read_text())
    assert config["theme"] == "tokyonight"
    assert config["provider"]["ollama"] == {"npm": "x"}
    assert config["provider"]["mlx-lama"] == {
        "npm": "@ai-sdk/openai-compatible",
        "name": "mlx-lama",
        "options": {
            "baseURL": "http://127.0.0.1:11434/v1",
            "apiKey": "{env:MLX_LAMA_API_KEY}",  # the key stays out of the file
        },
        "models": {"tiny": {"name": "tiny"}},
    }
    assert config["model"] == "mlx-lama/tiny"
    assert config["$schema"] == "https://opencode.ai/config.json"
    assert KEY not in config_path.read_text()


def test_config_leaves_a_file_it_cannot_read_alone(tmp_path: Path) -> None:
    settings_path = home() / ".claude" / "settings.json"
    settings_path.parent.mkdir(parents=True)
    settings_path.write_text('{\n  // a comment\n  "model": "opus"\n}\n')
    code, out, err = cli("launch", "claude", "--config", "-f", str(manifest(tmp_path)))
    assert (code, out) == (1, "")
    assert f"cannot merge into {settings_path}" in err and "nothing was changed" in err
    assert "// a comment" in settings_path.read_text()


def test_config_needs_neither_the_tool_nor_a_daemon_and_lets_a_never_model_be_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    path = manifest(tmp_path)
    path.write_text(path.read_text() + 'serve = "never"\n')
    code, _out, err = cli("launch", "opencode", "--config", "-f", str(path))
    assert code == 0
    assert 'tiny had serve = "never"' in err
    assert load_manifest(path).models["tiny"].serve == "on-demand"


def test_config_adds_and_pulls_a_model_new_to_the_manifest(
    tmp_path: Path, published_model: PublishedRepo
) -> None:
    path = manifest(tmp_path)
    code, _out, _err = cli(
        "launch", "claude", "--config", "--yes", "--model", published_model.repo_id,
        "-f", str(path),
    )  # fmt: skip
    assert code == 0
    models = load_manifest(path).models
    (key,) = [k for k, m in models.items() if m.repo == published_model.repo_id]
    settings = json.loads((home() / ".claude" / "settings.json").read_text())
    assert settings["env"]["ANTHROPIC_MODEL"] == key


# -- usage errors ----------------------------------------------------------------------------


def test_unknown_tool_lists_the_supported_ones(tmp_path: Path) -> None:
    code, out, err = cli("launch", "cursor", "-f", str(manifest(tmp_path)))
    assert (code, out) == (2, "")
    assert "unknown tool 'cursor'" in err and "claude, codex, opencode" in err


def test_without_model_several_models_are_named(tmp_path: Path) -> None:
    path = manifest(tmp_path, models=("alpha", "beta"))
    code, _out, err = cli("launch", "codex", "--config", "-f", str(path))
    assert code == 2
    assert "alpha, beta" in err and "--model" in err


def test_unknown_model_is_refused(tmp_path: Path) -> None:
    code, _out, err = cli(
        "launch", "claude", "--config", "--model", "nope", "-f", str(manifest(tmp_path))
    )
    assert code == 1
    assert "nope" in err
    assert not (home() / ".claude").exists()


@pytest.mark.parametrize(
    ("tool", "install"),
    [
        ("claude", "npm install -g @anthropic-ai/claude-code"),
        ("codex", "npm install -g @openai/codex"),
        ("opencode", "npm install -g opencode-ai"),
    ],
)
def test_missing_tool_says_how_to_install_it(
    tool: str, install: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    code, out, err = cli("launch", tool, "-f", str(manifest(tmp_path)))
    assert (code, out) == (1, "")
    assert f"(`{tool}`) is not on PATH" in err and install in err
    assert not (Path(os.environ["MLX_LAMA_HOME"]) / "daemon.json").exists()  # nothing started


# -- runs, with a stand-in agent and a real daemon -------------------------------------------


def stand_in_agents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``claude``, ``codex`` and ``opencode`` on PATH: each writes its argv and environment
    to ``calls/NAME.json`` and exits 3. Returns the calls folder."""
    folder, calls = tmp_path / "bin", tmp_path / "calls"
    folder.mkdir()
    calls.mkdir()
    for name in AGENTS:
        script = folder / name
        script.write_text(
            f"#!{sys.executable}\n"
            "import json, os, sys\n"
            f"with open({str(calls / (name + '.json'))!r}, 'w') as out:\n"
            "    json.dump({'argv': sys.argv[1:], 'env': dict(os.environ)}, out)\n"
            "sys.exit(3)\n"
        )
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return calls


def call(calls: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((calls / f"{name}.json").read_text())
    return data


@pytest.mark.server
def test_launch_points_each_agent_at_the_running_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = stand_in_agents(tmp_path, monkeypatch)
    path = manifest(tmp_path, server=f'api_key = "{KEY}"')
    with gateway_process(path, log_path=tmp_path / "serve.log") as gateway:
        for tool in AGENTS:
            code, out, err = cli("launch", tool, "-f", str(path), "--", "run", "-p", "hello")
            assert (code, out) == (3, ""), err  # the agent's own exit code
            assert "started the mlx-lama daemon" not in err
            assert f"launching {AGENTS[tool].title} with tiny on {gateway.url}" in err
    claude = call(calls, "claude")
    assert claude["argv"] == ["run", "-p", "hello"]
    assert {k: claude["env"][k] for k in claude_env(Endpoint("", ""))} == {
        "ANTHROPIC_BASE_URL": gateway.url,
        "ANTHROPIC_AUTH_TOKEN": KEY,
        "ANTHROPIC_API_KEY": "",
        **dict.fromkeys(MODEL_VARIABLES, "tiny"),
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    codex = call(calls, "codex")
    assert codex["argv"] == [
        *codex_overrides(Endpoint(gateway.url, "tiny", KEY)),
        "run",
        "-p",
        "hello",
    ]
    assert f'model_providers.mlx-lama.base_url="{gateway.url}/v1"' in codex["argv"]
    assert codex["env"]["MLX_LAMA_API_KEY"] == KEY
    opencode = call(calls, "opencode")
    assert opencode["argv"] == ["run", "-p", "hello"]
    content = json.loads(opencode["env"]["OPENCODE_CONFIG_CONTENT"])
    assert content["model"] == "mlx-lama/tiny"
    assert content["provider"]["mlx-lama"]["options"] == {
        "baseURL": f"{gateway.url}/v1",
        "apiKey": KEY,
    }
    assert not (home() / ".claude").exists() and not (home() / ".codex").exists()


@pytest.fixture
def our_daemons() -> Iterator[None]:
    """Stop, by PID, every ``mlx-lama serve`` this test process started, afterwards."""
    before = {p.pid for p in psutil.Process().children()}
    try:
        yield
    finally:
        for child in psutil.Process().children():
            if child.pid in before:
                continue
            with suppress(psutil.Error):
                if "serve" in child.cmdline():
                    os.kill(child.pid, signal.SIGTERM)
                    try:
                        child.wait(30)
                    except psutil.TimeoutExpired:
                        os.killpg(child.pid, signal.SIGKILL)
                        child.wait(10)
        reap_servers(Path(os.environ["MLX_LAMA_HOME"]))


@pytest.mark.server
def test_launch_starts_the_daemon_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, our_daemons: None
) -> None:
    calls = stand_in_agents(tmp_path, monkeypatch)
    port = free_port()
    monkeypatch.setenv("MLX_LAMA_HOST", f"127.0.0.1:{port}")
    path = manifest(tmp_path)
    code, out, err = cli("launch", "claude", "-f", str(path))
    assert (code, out) == (3, ""), err
    pid = int(re.findall(r"started the mlx-lama daemon \(pid (\d+)\)", err)[0])
    assert f"`kill {pid}` stops it" in err
    url = f"http://127.0.0.1:{port}"
    assert call(calls, "claude")["env"]["ANTHROPIC_BASE_URL"] == url
    # It outlives launch, detached from its terminal, and serves this manifest.
    assert os.getsid(pid) == pid
    with httpx.Client(trust_env=False, timeout=10) as client:
        assert client.get(f"{url}/health").status_code == 200
    daemon = json.loads((Path(os.environ["MLX_LAMA_HOME"]) / "daemon.json").read_text())
    assert (daemon["pid"], daemon["manifest"]) == (pid, str(path))
    # Its output went to daemon.log once: no line of its logging twice.
    log = (Path(os.environ["MLX_LAMA_HOME"]) / "logs" / "daemon.log").read_text()
    assert log.count("mlx-lama launch starts the daemon") == 1
    assert f"mlx-lama gateway on {url}" in log
    logged = [line for line in log.splitlines() if re.match(r"\d{4}-\d\d-\d\d .* INFO ", line)]
    assert logged and len(logged) == len(set(logged))
    # A second launch finds it.
    code, _out, err = cli("launch", "claude", "-f", str(path))
    assert code == 3 and "started" not in err
