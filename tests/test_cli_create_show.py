"""``mlx-lama create`` and ``mlx-lama show``: a Modelfile into the manifest and back."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_lama.schema.loader import load_manifest
from mlx_lama.schema.lockfile import Lock, LockedModel, lock_path_for, write_lock
from mlx_lama.schema.manifest import Message, ModelEntry, Parameters
from tests.conftest import TINY_REPO_ID, PublishedRepo
from tests.fixtures.cli import cli
from tests.fixtures.hf_cache import CachedRepo

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("mlx", "mlx_lm", "transformers", "uvicorn", "torch")

MANIFEST = """\
# The team's models.
version = 1

[aliases]
"helper" = "existing"  # short name

# Kept as it is.
[models."existing"]
repo = "org/existing"  # pinned elsewhere
serve = "never"
"""

MODELFILE = '''\
# Built from the tiny model.
FROM ./models/tiny
PARAMETER temperature 0.3
PARAMETER stop "<|im_end|>"
PARAMETER stop """

"""
SYSTEM """You are terse.
Say "no" often."""
TEMPLATE "{{ .Prompt }}"
ADAPTER adapters/lora
LICENSE MIT
LICENSE """Second
license"""
MESSAGE user hi
MESSAGE assistant """hello
there"""
'''

MINE = ModelEntry(
    path="./models/tiny",
    system='You are terse.\nSay "no" often.',
    template="{{ .Prompt }}",
    adapter="./adapters/lora",
    license=["MIT", "Second\nlicense"],
    messages=[Message("user", "hi"), Message("assistant", "hello\nthere")],
    parameters=Parameters(temperature=0.3, stop=["<|im_end|>", "\n\n"]),
)


@pytest.fixture
def project(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder (the cwd) with a manifest, a copy of the tiny model and a Modelfile."""
    folder = tmp_path / "project"
    shutil.copytree(tiny_model, folder / "models" / "tiny")
    (folder / "adapters" / "lora").mkdir(parents=True)
    (folder / "mlxlama.toml").write_text(MANIFEST, encoding="utf-8")
    (folder / "Modelfile").write_text(MODELFILE, encoding="utf-8")
    monkeypatch.chdir(folder)
    return folder


def created(project: Path, name: str = "mine", *args: str) -> ModelEntry:
    code, out, err = cli("create", name, *args)
    assert code == 0, err
    assert err.splitlines()[:2] == ["gathering model components", "writing manifest"]
    assert err.splitlines()[-1] == "success" and out == ""
    return load_manifest(project / "mlxlama.toml").models[name]


# -- create ---------------------------------------------------------------------------


def test_create_adds_the_model_and_keeps_the_manifest_as_written(project: Path) -> None:
    assert created(project) == MINE
    text = (project / "mlxlama.toml").read_text(encoding="utf-8")
    assert text.startswith(MANIFEST)  # comments, order and quoting untouched
    assert '[models."mine"]\npath = "./models/tiny"\n' in text
    assert 'system = """You are terse.\nSay "no" often."""\n' in text  # reads like the Modelfile


def test_show_modelfile_feeds_create_the_same_model(project: Path, tmp_path: Path) -> None:
    created(project)
    code, modelfile, err = cli("show", "mine", "--modelfile")
    assert code == 0, err
    assert f"FROM {project / 'models' / 'tiny'}\n" in modelfile  # works from any folder
    assert f"ADAPTER {project / 'adapters' / 'lora'}\n" in modelfile
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "Modelfile").write_text(modelfile, encoding="utf-8")
    again = created(project, "copy:v2", "-f", str(elsewhere / "Modelfile"))
    assert again == MINE  # the same source, stored the same way, and the same settings


def test_create_builds_on_a_manifest_model(project: Path) -> None:
    base = '[models."local"]\npath = "./models/tiny"\nsystem = "Base."\nlicense = "MIT"\n'
    with (project / "mlxlama.toml").open("a", encoding="utf-8") as manifest:
        manifest.write(f'\n{base}[models."local".parameters]\ntemperature = 0.1\n')
    (project / "Modelfile").write_text("FROM local\nSYSTEM Be kind.\nPARAMETER top_k 7\n")
    assert created(project, "kind") == ModelEntry(
        path="./models/tiny",
        system="Be kind.",
        license=["MIT"],
        parameters=Parameters(temperature=0.1, top_k=7),
    )


def test_create_over_a_model_replaces_its_modelfile_settings_only(project: Path) -> None:
    manifest = project / "mlxlama.toml"
    manifest.write_text(
        MANIFEST + '\n[models."mine"]\npath = "./models/tiny"\nserve = "never"  # not yet\n'
        'port = 8099\nsystem = "old"\nadapter = "./models"\n'
        '[models."mine".parameters]\ntemperature = 0.9\nseed = 1\n',
        encoding="utf-8",
    )
    (project / "Modelfile").write_text("FROM ./models/tiny\nSYSTEM new\nPARAMETER seed 2\n")
    code, _, err = cli("create", "Mine:latest")
    assert code == 0, err
    models = load_manifest(manifest).models
    assert list(models) == ["existing", "mine"]  # the manifest's own spelling is kept
    assert models["mine"] == ModelEntry(
        path="./models/tiny", serve="never", port=8099, system="new", parameters=Parameters(seed=2)
    )
    assert 'serve = "never"  # not yet\n' in manifest.read_text(encoding="utf-8")


def test_a_bad_modelfile_names_its_lines_and_changes_nothing(project: Path) -> None:
    (project / "Modelfile").write_text("FROM ./models/tiny\n\nPARAMETER top_p 7\nDRAFT ./d\n")
    before = (project / "mlxlama.toml").read_bytes()
    code, out, err = cli("create", "mine")
    assert code == 1 and out == ""
    assert "Modelfile: 2 problems:" in err
    assert "  Modelfile:3:1: PARAMETER top_p: input should be less than or equal to 1" in err
    assert "  Modelfile:4:1: DRAFT: mlx-lama cannot honour DRAFT" in err
    assert "Traceback" not in err
    assert (project / "mlxlama.toml").read_bytes() == before


def test_an_unknown_from_is_reported_on_its_line(project: Path) -> None:
    (project / "Modelfile").write_text("# base\nFROM no-such-model:9b\n")
    before = (project / "mlxlama.toml").read_bytes()
    code, _, err = cli("create", "mine")
    assert code == 1
    assert "Modelfile:2:1: FROM: FROM no-such-model:9b: unknown model" in err
    assert (project / "mlxlama.toml").read_bytes() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["create", "bad..name"], "error: invalid model name 'bad..name'"),
        (["create", "mine", "-f", "nowhere/Modelfile"], "error: no Modelfile at nowhere/Modelfile"),
        (["create", "helper"], "error: 'helper' is already an alias of 'existing'"),
    ],
)
def test_create_refusals_leave_the_manifest_alone(
    project: Path, args: list[str], message: str
) -> None:
    before = (project / "mlxlama.toml").read_bytes()
    code, _, err = cli(*args)
    assert code == 1 and err.splitlines()[-1].startswith(message)
    assert (project / "mlxlama.toml").read_bytes() == before


def test_create_from_a_repo_pulls_it_into_the_manifest_named(
    project: Path, tmp_path: Path, published_model: PublishedRepo
) -> None:
    other = tmp_path / "other.toml"
    other.write_text("version = 1\n", encoding="utf-8")
    (project / "Modelfile").write_text(f"FROM {TINY_REPO_ID}@main\n")
    before = (project / "mlxlama.toml").read_bytes()
    code, _, err = cli("create", "remote", "--manifest", str(other))
    assert code == 0, err
    assert load_manifest(other).models["remote"] == ModelEntry(repo=TINY_REPO_ID, revision="main")
    assert (project / "mlxlama.toml").read_bytes() == before
    code, out, _ = cli("show", "remote", "-f", str(other))  # settle pulled and locked it
    assert code == 0 and rows(out)["commit"] == published_model.commit
    assert rows(out)["architecture"] == "llama"


# -- show -----------------------------------------------------------------------------


def rows(text: str) -> dict[str, str]:
    """The ``    key    value`` lines of ``show`` output, as a dict."""
    return dict(
        (m.group(1), m.group(2)) for m in re.finditer(r"^    (\S.*?)\s{2,}(\S.*)$", text, re.M)
    )


def test_show_describes_the_model_and_where_the_manifest_keeps_it(project: Path) -> None:
    created(project)
    code, out, err = cli("show", "mine")
    assert code == 0, err
    sections = [line.strip() for line in out.splitlines() if re.match(r"^  \S", line)]
    assert sections == ["Model", "Capabilities", "Parameters", "System", "License", "Manifest"]
    found = rows(out)
    assert found["architecture"] == "llama"
    assert found["context length"] == "2048"
    assert found["embedding length"] == "64"
    assert found["quantization"] == "BF16"
    assert found["parameters"].endswith("K")
    assert found["temperature"] == "0.3"
    assert found["path"] == f"./models/tiny ({project / 'models' / 'tiny'})"
    assert (found["backend"], found["serve"], found["keep_alive"]) == ("mlx-lm", "on-demand", "5m")
    assert found["port"] == "assigned when started"
    # its server's memory: the tiny weights, the least KV cache bound, in the budget
    assert re.fullmatch(
        r"about [\d.]+ [KMG]B served \(weights [\d.]+ KB, KV caches up to 67\.1 MB\); "
        r"memory_budget [\d.]+ GB: fits",  # (64 MiB, the least bound)
        found["memory"],
    ), found["memory"]
    assert found["adapter"] == "./adapters/lora"
    assert "\n  Capabilities\n    completion\n" in out
    assert '\n  System\n    You are terse.\n    Say "no" often.\n' in out


def test_show_a_repo_model_finds_its_locked_snapshot(
    project: Path, cached_model: CachedRepo
) -> None:
    manifest = project / "mlxlama.toml"
    manifest.write_text(MANIFEST + f'\n[models."tiny"]\nrepo = "{TINY_REPO_ID}"\nserve = "never"\n')
    code, out, _ = cli("show", "tiny")
    assert code == 0
    assert "  Model\n    not downloaded: run `mlx-lama pull tiny`" in out  # no lock yet
    assert rows(out)["commit"].startswith("not locked yet")
    files = tuple(sorted((f.path, f.size) for f in cached_model.files.values()))
    locked = LockedModel("tiny", TINY_REPO_ID, "main", cached_model.commit, files)
    write_lock(lock_path_for(manifest), Lock((locked,)))
    code, out, _ = cli("show", f"{TINY_REPO_ID}")  # a repo id finds the model using it
    assert code == 0
    found = rows(out)
    assert found["architecture"] == "llama" and found["commit"] == cached_model.commit
    assert found["size"].endswith("KB") or found["size"].endswith("MB")
    assert found["serve"] == "never"


def test_show_resolves_aliases_and_latest_and_lists_the_aliases(project: Path) -> None:
    for name in ("helper", "existing:latest", "EXISTING"):
        code, out, _ = cli("show", name)
        assert code == 0
        found = rows(out)
        assert (found["repo"], found["aliases"]) == ("org/existing", "helper")
        assert "not downloaded" in out


def test_show_prints_one_part_on_request(project: Path) -> None:
    created(project)
    assert cli("show", "mine", "--parameters")[1] == (
        'temperature 0.3\nstop "<|im_end|>"\nstop "\\n\\n"\n'
    )
    assert cli("show", "mine", "--system")[1] == 'You are terse.\nSay "no" often.\n'
    assert cli("show", "mine", "--license")[1] == "MIT\nSecond\nlicense\n"
    assert cli("show", "mine", "--template")[1] == "{{ .Prompt }}\n"
    assert cli("show", "existing", "--system") == (0, "", "")  # unset: nothing


def test_show_template_falls_back_to_the_chat_template(project: Path) -> None:
    (project / "Modelfile").write_text("FROM ./models/tiny\n")
    created(project, "plain")
    chat = json.loads((project / "models" / "tiny" / "tokenizer_config.json").read_text())
    assert cli("show", "plain", "--template")[1] == chat["chat_template"] + "\n"


def test_show_json_has_the_api_fields_and_the_manifest(project: Path) -> None:
    created(project)
    code, out, _ = cli("show", "mine", "--json")
    assert code == 0
    body = json.loads(out)
    assert body["license"] == "MIT\nSecond\nlicense"
    assert body["model_info"]["general.architecture"] == "llama"
    assert body["details"]["quantization_level"] == "BF16"
    assert body["manifest"]["path"] == "./models/tiny" and body["manifest"]["downloaded"] is True


def test_show_refuses_two_views_at_once(project: Path) -> None:
    code, out, err = cli("show", "existing", "--system", "--license")
    assert (code, out) == (2, "")
    assert err == "error: --system and --license cannot be combined (choose one of them)\n"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nope", "error: model 'nope' is not in"),
        ("existin", "did you mean 'existing'?"),
        (
            "llama3.2",
            "error: model 'llama3.2' (mlx-community/Llama-3.2-3B-Instruct-4bit) is not in",
        ),
    ],
)
def test_show_an_unknown_model_says_how_to_find_one(project: Path, name: str, message: str) -> None:
    code, out, err = cli("show", name)
    assert (code, out) == (1, "")
    assert message in err and "`mlx-lama list`" in err and "Traceback" not in err


def test_show_never_imports_the_engine() -> None:
    script = (
        "import json, sys\n"
        "from mlx_lama.cli import app\n"
        "sys.argv = ['mlx-lama', 'show', 'coder', '-f', sys.argv[1]]\n"
        "try:\n    app()\nexcept SystemExit as exit:\n    code = exit.code\n"
        f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))\n"
        "print(json.dumps({'code': code, 'heavy': heavy}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(ROOT / "mlxlama.toml.example")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert json.loads(done.stdout.splitlines()[-1]) == {"code": 0, "heavy": []}, done.stderr
    assert "  License\n    Apache-2.0\n" in done.stdout


def test_text_no_modelfile_can_hold_fails_modelfile_but_not_json(project: Path) -> None:
    with (project / "mlxlama.toml").open("a", encoding="utf-8") as manifest:
        manifest.write('\n[models."odd"]\npath = "./models/tiny"\nsystem = "a\\n\\"\\"\\"\\nb"\n')
    code, out, err = cli("show", "odd", "--modelfile")
    assert (code, out) == (1, "")
    assert err.startswith("error: SYSTEM holds three double quotes in a row, which a Modelfile")
    code, out, _ = cli("show", "odd", "--json")
    body = json.loads(out)
    assert code == 0 and body["system"] == 'a\n"""\nb'
    assert body["modelfile"].startswith("# SYSTEM holds three double quotes")
