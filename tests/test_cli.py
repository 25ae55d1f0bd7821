"""The CLI skeleton: --version, --help, validate, aliases; exit codes and streams."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mlx_lama import __version__, paths
from mlx_lama.cli import app

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "mlxlama.toml.example"
HEAVY = ("mlx", "mlx_lm", "transformers", "uvicorn", "torch")

runner = CliRunner()


def test_version_says_which_python_and_where_the_engines_live(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "engines" / "vllm-mlx").mkdir(parents=True)
    (tmp_path / "engines" / "vllm-mlx" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (tmp_path / "engines" / "stray-folder").mkdir()
    monkeypatch.setenv("MLX_LAMA_ENGINES", str(tmp_path / "engines"))
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    first, python, engines = result.stdout.splitlines()
    assert first == f"mlx-lama {__version__}"
    assert python.split()[:2] == ["python", sys.executable]
    assert engines == f"engines  {tmp_path / 'engines'} (vllm-mlx)"
    monkeypatch.setenv("MLX_LAMA_ENGINES", str(tmp_path / "none"))
    said = runner.invoke(app, ["--version"]).stdout
    assert said.endswith("(none yet: `mlx-lama install vllm-mlx`)\n")


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "validate" in result.stdout and "aliases" in result.stdout
    assert "MLX_LAMA_MANIFEST" in result.stdout


def test_no_arguments_shows_help_as_a_usage_error() -> None:
    result = runner.invoke(app, [])
    assert result.exit_code == 2
    assert "Usage:" in result.output


def test_validate_ok_on_the_example() -> None:
    result = runner.invoke(app, ["validate", "-f", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"OK: 7 models, 2 aliases ({EXAMPLE})\n"
    assert result.stderr == ""


def test_validate_reports_every_problem_on_stderr(tmp_path: Path) -> None:
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(
        'version = 1\n[server]\nprot = 1\n[models.a]\nrepo = "o/a"\nport = 9000\n'
        '[models.b]\nrepo = "o/b"\nport = 9000\n[aliases]\nx = "c"\n'
    )
    result = runner.invoke(app, ["validate", "-f", str(manifest)])
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == f"error: {manifest}: 3 problems:"
    assert lines[1].startswith(f"  {manifest}:3:1: server.prot: unknown key 'prot'")
    assert lines[2].startswith(f"  {manifest}:9:1: models.b.port: port 9000 is already used")
    assert lines[3].startswith(f"  {manifest}:11:1: aliases.x: alias target 'c'")
    assert "Traceback" not in result.output


def test_validate_refuses_a_manifest_that_does_not_say_its_version(tmp_path: Path) -> None:
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text('[models.a]\nrepo = "o/a"\n')
    result = runner.invoke(app, ["validate", "-f", str(manifest)])
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr.splitlines() == [
        f"error: {manifest}: 1 problem:",
        f"  {manifest}:1:1: the manifest does not say which version it is "
        "(add `version = 1` as its first line)",
    ]


def test_validate_uses_discovery_and_creates_the_global_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["validate"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"OK: 0 models, 0 aliases ({paths.global_manifest()})\n"


def test_validate_missing_file_is_one_line_and_exit_1(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", "-f", str(tmp_path / "nope.toml")])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: no manifest at ")
    assert len(result.stderr.splitlines()) == 1


def test_debug_mode_lets_the_exception_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLX_LAMA_DEBUG", "1")
    result = runner.invoke(app, ["validate", "-f", str(tmp_path / "nope.toml")])
    assert result.exit_code == 1
    assert type(result.exception).__name__ == "ManifestNotFoundError"


def test_aliases_lists_every_layer_with_its_source(tmp_path: Path) -> None:
    paths.registry_file().parent.mkdir(parents=True, exist_ok=True)
    paths.registry_file().write_text(
        yaml.safe_dump({"models": {"mine:1b": {"repo": "me/my-model", "description": "mine"}}})
    )
    result = runner.invoke(app, ["aliases", "-f", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert result.stdout.splitlines()[0].split() == ["NAME", "TARGET", "SOURCE", "DESCRIPTION"]
    assert rows["coder"][1:3] == ["qwen2.5-coder:7b", "manifest"]
    assert rows["mine:1b"][1:3] == ["me/my-model", "user"]
    assert sum(1 for row in rows.values() if row[2] == "builtin") >= 20


def test_aliases_json(tmp_path: Path) -> None:
    result = runner.invoke(app, ["aliases", "--json", "-f", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    entries = json.loads(result.stdout)
    by_name = {e["name"]: e for e in entries}
    assert by_name["assistant"] == {
        "name": "assistant",
        "target": "llama3.2:3b",
        "source": "manifest",
        "description": "",
    }
    assert all(set(e) == {"name", "target", "source", "description"} for e in entries)


def test_aliases_all_shows_what_a_higher_layer_hides() -> None:
    paths.registry_file().parent.mkdir(parents=True, exist_ok=True)
    paths.registry_file().write_text(
        yaml.safe_dump({"models": {"qwen2.5:7b": {"repo": "me/qwen", "description": "mine"}}})
    )
    plain = runner.invoke(app, ["aliases", "--json", "-f", str(EXAMPLE)])
    every = runner.invoke(app, ["aliases", "--json", "--all", "-f", str(EXAMPLE)])
    assert plain.exit_code == every.exit_code == 0, plain.output + every.output
    visible = [e for e in json.loads(plain.stdout) if e["name"] == "qwen2.5:7b"]
    assert [(e["target"], e["source"]) for e in visible] == [("me/qwen", "user")]
    hidden = [e for e in json.loads(every.stdout) if e["name"] == "qwen2.5:7b"]
    assert {(e["source"], e["hidden_by"]) for e in hidden} == {("user", None), ("builtin", "user")}
    table = runner.invoke(app, ["aliases", "--all", "-f", str(EXAMPLE)])
    assert any(
        line.startswith("qwen2.5:7b") and "builtin (hidden by user)" in line
        for line in table.stdout.splitlines()
    )


def test_aliases_reports_a_broken_registry_file() -> None:
    paths.registry_file().parent.mkdir(parents=True, exist_ok=True)
    paths.registry_file().write_text("models: [not, a, mapping]\n")
    result = runner.invoke(app, ["aliases", "-f", str(EXAMPLE)])
    assert result.exit_code == 2  # a user settings file is wrong: a usage error
    assert str(paths.registry_file()) in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["--version"], ["validate", "-f", str(EXAMPLE)], ["aliases", "-f", str(EXAMPLE)]],
)
def test_light_commands_never_import_the_engine(argv: list[str]) -> None:
    script = (
        "import json, sys\n"
        "from mlx_lama.cli import app\n"
        f"sys.argv = ['mlx-lama', *{argv!r}]\n"
        "try:\n    app()\nexcept SystemExit as exit:\n    code = exit.code\n"
        f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))\n"
        "print(json.dumps({'code': code, 'heavy': heavy}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    report = json.loads(done.stdout.splitlines()[-1])
    assert report == {"code": 0, "heavy": []}, done.stderr
