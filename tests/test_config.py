"""User settings from config.yaml and MLX_LAMA_* variables (mlx_lama.config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlx_lama.config import (
    DEFAULT_BACKEND,
    DEFAULT_PORT,
    KNOWN_BACKENDS,
    Settings,
    load_settings,
)
from mlx_lama.errors import ConfigError
from mlx_lama.yamlfile import read_yaml_file


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("MLX_LAMA_HOME", str(home))
    for name in ("MLX_LAMA_DEFAULT_BACKEND", "MLX_LAMA_DEFAULT_PORT"):
        monkeypatch.delenv(name, raising=False)
    return home


def _write_config(home: Path, text: str) -> Path:
    path = home / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults(home: Path) -> None:
    assert load_settings() == Settings(home=home, default_backend="mlx-lm", default_port=8000)
    assert (DEFAULT_BACKEND, DEFAULT_PORT) == ("mlx-lm", 8000)
    assert KNOWN_BACKENDS == ("mlx-lm", "vllm-mlx", "external")


def test_home_follows_mlx_lama_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text("default_port: 9999\n", encoding="utf-8")
    monkeypatch.setenv("MLX_LAMA_HOME", str(other))
    settings = load_settings()
    assert (settings.home, settings.default_port) == (other, 9999)


def test_yaml_file_sets_values(home: Path) -> None:
    _write_config(home, "default_backend: vllm-mlx\ndefault_port: 9000\n")
    assert load_settings() == Settings(home=home, default_backend="vllm-mlx", default_port=9000)


def test_seed_format_config_is_accepted(home: Path) -> None:
    # Exactly what the earlier mlx-lama's Config.save() wrote (yaml.dump, sorted keys).
    _write_config(home, "default_backend: mlx-lm\ndefault_port: 8000\n")
    assert load_settings() == Settings(home=home)
    _write_config(home, "default_backend: external\ndefault_port: 11434\n")
    settings = load_settings()
    assert (settings.default_backend, settings.default_port) == ("external", 11434)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n"])
def test_empty_yaml_file_gives_defaults(home: Path, text: str) -> None:
    _write_config(home, text)
    assert load_settings() == Settings(home=home)


def test_backend_is_normalised(home: Path) -> None:
    _write_config(home, "default_backend: ' MLX-LM '\n")
    assert load_settings().default_backend == "mlx-lm"


@pytest.mark.parametrize(
    ("file_text", "env", "expected"),
    [
        ("default_port: 9000\n", {"MLX_LAMA_DEFAULT_PORT": "9100"}, ("mlx-lm", 9100)),
        (
            "default_backend: external\n",
            {"MLX_LAMA_DEFAULT_BACKEND": "vllm-mlx"},
            ("vllm-mlx", 8000),
        ),
        (
            "default_backend: external\ndefault_port: 1\n",
            {"MLX_LAMA_DEFAULT_PORT": "2"},
            ("external", 2),
        ),
        (None, {"MLX_LAMA_DEFAULT_PORT": "1234"}, ("mlx-lm", 1234)),
        # an empty variable counts as unset
        ("default_port: 9000\n", {"MLX_LAMA_DEFAULT_PORT": ""}, ("mlx-lm", 9000)),
    ],
)
def test_env_beats_yaml_beats_defaults(
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    file_text: str | None,
    env: dict[str, str],
    expected: tuple[str, int],
) -> None:
    if file_text is not None:
        _write_config(home, file_text)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert (settings.default_backend, settings.default_port) == expected


def test_unrelated_mlx_lama_variables_are_ignored(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "MLX_LAMA_MANIFEST": "/somewhere/mlxlama.toml",
        "MLX_LAMA_DEBUG": "1",
        "MLX_LAMA_HOST": "0.0.0.0",
        "MLX_LAMA_SOMETHING_NEW": "x",
    }.items():
        monkeypatch.setenv(name, value)
    assert load_settings() == Settings(home=home)


def test_settings_are_read_at_call_time(home: Path) -> None:
    assert load_settings().default_port == 8000
    _write_config(home, "default_port: 8123\n")
    assert load_settings().default_port == 8123


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("MLX_LAMA_DEFAULT_PORT", "abc", "'abc' is not a port number"),
        ("MLX_LAMA_DEFAULT_PORT", "0", "0 is out of range"),
        ("MLX_LAMA_DEFAULT_PORT", "70000", "70000 is out of range"),
        ("MLX_LAMA_DEFAULT_BACKEND", "mlx_lm", "did you mean 'mlx-lm'?"),
        ("MLX_LAMA_DEFAULT_BACKEND", "ollama", "unknown backend 'ollama'"),
    ],
)
def test_bad_env_value_names_the_variable_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert f"{variable}={value!r}" in message
    assert expected in message
    assert info.value.hint is not None
    assert variable in info.value.hint
    assert "unset" in info.value.hint


def test_bad_env_value_wins_over_a_good_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write_config(home, "default_port: 9000\n")
    monkeypatch.setenv("MLX_LAMA_DEFAULT_PORT", "nope")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "MLX_LAMA_DEFAULT_PORT" in str(info.value)
    assert str(path) not in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("default_port: abc\n", "config.yaml:1: default_port: 'abc' is not a port number"),
        ("default_port: 70000\n", "config.yaml:1: default_port: 70000 is out of range"),
        ("default_port: true\n", "default_port: true is not a port number"),
        ("default_backend: vllm\n", "unknown backend 'vllm'; did you mean 'vllm-mlx'?"),
        ("default_backend: [mlx-lm]\n", "default_backend"),
    ],
)
def test_bad_yaml_value_names_the_file_key_and_fix(home: Path, text: str, expected: str) -> None:
    path = _write_config(home, text)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(path) in str(info.value)
    assert expected in str(info.value)
    assert info.value.hint is not None
    assert f"in {path}" in info.value.hint


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("default_prot: 9000\n", "unknown setting 'default_prot'; did you mean 'default_port'?"),
        ("default_backnd: mlx-lm\n", "did you mean 'default_backend'?"),
        ("colour: blue\n", "unknown setting 'colour'"),
        ("7: seven\n", "unknown setting 7"),
    ],
)
def test_unknown_key_is_refused_with_a_suggestion(home: Path, text: str, expected: str) -> None:
    path = _write_config(home, text)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(path) in str(info.value)
    assert expected in str(info.value)
    assert "default_backend, default_port" in str(info.value)


def test_home_in_yaml_is_refused(home: Path) -> None:
    path = _write_config(home, "home: /elsewhere\ndefault_port: 9000\n")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(path) in str(info.value)
    assert "`home`" in str(info.value)
    assert info.value.hint is not None
    assert "MLX_LAMA_HOME" in info.value.hint


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("default_port: [\n", "not valid YAML"),
        ("default_port: 1\ndefault_port: 2\n", "the key 'default_port' appears twice"),
        ("- default_port\n", "expected a mapping of settings, found a list"),
        ("just text\n", "expected a mapping of settings, found a string"),
    ],
)
def test_broken_yaml_file_names_the_file(home: Path, text: str, expected: str) -> None:
    path = _write_config(home, text)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_yaml_syntax_error_names_the_line(home: Path) -> None:
    path = _write_config(home, "default_port: 1\ndefault_backend: [\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_settings()
    assert str(info.value).startswith(f"{path}:")


def test_config_path_that_is_a_folder_is_refused(home: Path) -> None:
    (home / "config.yaml").mkdir()
    with pytest.raises(ConfigError, match="is not a file"):
        load_settings()


def test_read_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("", encoding="utf-8")
    assert read_yaml_file(path) is None
    path.write_text("base: &b {a: 1}\nmerged:\n  <<: *b\n  a: 2\n", encoding="utf-8")
    assert read_yaml_file(path) == {"base": {"a": 1}, "merged": {"a": 2}}
    with pytest.raises(ConfigError, match="cannot read"):
        read_yaml_file(tmp_path / "missing.yaml")
