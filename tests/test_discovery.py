"""Which manifest a command uses: -f, $MLX_LAMA_MANIFEST, ./mlxlama.toml upward, global."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlx_lama import paths
from mlx_lama.errors import ManifestNotFoundError
from mlx_lama.schema import find_manifest, load_manifest
from mlx_lama.schema.discovery import EMPTY_MANIFEST


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "src" / "deep").mkdir(parents=True)
    (root / "mlxlama.toml").write_text("version = 1\n")
    return root


def test_explicit_file_wins_over_everything(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other.toml"
    other.write_text("version = 1\n")
    monkeypatch.setenv("MLX_LAMA_MANIFEST", str(project / "mlxlama.toml"))
    found = find_manifest(other, cwd=project)
    assert (found.path, found.source) == (other, "flag")


def test_explicit_folder_means_its_manifest(project: Path) -> None:
    assert find_manifest(project, cwd=Path("/")).path == project / "mlxlama.toml"


def test_environment_variable_beats_the_project_file(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen = tmp_path / "chosen.toml"
    chosen.write_text("version = 1\n")
    monkeypatch.setenv("MLX_LAMA_MANIFEST", str(chosen))
    found = find_manifest(cwd=project)
    assert (found.path, found.source) == (chosen, "env")


def test_project_manifest_is_found_searching_upward(project: Path) -> None:
    found = find_manifest(cwd=project / "src" / "deep")
    assert (found.path, found.source) == (project / "mlxlama.toml", "project")


def test_cwd_defaults_to_the_working_folder(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project / "src")
    assert find_manifest().path == project / "mlxlama.toml"


def test_global_manifest_is_created_valid_and_empty(tmp_path: Path) -> None:
    elsewhere = tmp_path / "no-project-here"
    elsewhere.mkdir()
    target = paths.global_manifest()
    assert not target.exists()
    found = find_manifest(cwd=elsewhere)
    assert (found.path, found.source) == (target, "global")
    assert target.read_text() == EMPTY_MANIFEST
    manifest = load_manifest(target)
    assert manifest.models == {} and manifest.aliases == {}


def test_existing_global_manifest_is_left_alone(tmp_path: Path) -> None:
    target = paths.global_manifest()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("version = 1\n[aliases]\n# mine\n")
    find_manifest(cwd=tmp_path)
    assert target.read_text() == "version = 1\n[aliases]\n# mine\n"


def test_global_manifest_not_created_when_asked_not_to(tmp_path: Path) -> None:
    found = find_manifest(cwd=tmp_path, create=False)
    assert found.source == "global"
    assert not found.path.exists()


@pytest.mark.parametrize("via", ["flag", "env"])
def test_a_named_manifest_must_exist(
    via: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "missing.toml"
    if via == "env":
        monkeypatch.setenv("MLX_LAMA_MANIFEST", str(missing))
        expected = "MLX_LAMA_MANIFEST"
    else:
        expected = "-f"
    with pytest.raises(ManifestNotFoundError) as caught:
        find_manifest(missing if via == "flag" else None, cwd=tmp_path)
    assert str(missing) in str(caught.value)
    assert expected in str(caught.value)
    assert not paths.global_manifest().exists()


@pytest.mark.parametrize("kind", ["folder", "dangling link", "looping link"])
def test_something_else_named_mlxlama_toml_is_an_error_not_a_fall_back(
    tmp_path: Path, kind: str
) -> None:
    """A folder or a broken link where the project's manifest should be stops the
    search: falling back to the global manifest would let apply act on it."""
    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    there = project / paths.MANIFEST_NAME
    if kind == "folder":
        there.mkdir()
    elif kind == "dangling link":
        there.symlink_to(project / "gone.toml")
    else:
        there.symlink_to(there)
    with pytest.raises(ManifestNotFoundError) as caught:
        find_manifest(cwd=project / "sub")
    said = {"folder": "is a folder", "dangling link": "leads to no file"}.get(kind, "loops")
    assert f"{there} is " in str(caught.value) and said in str(caught.value)
    assert caught.value.hint is not None and "global" in caught.value.hint
    assert not paths.global_manifest().exists()  # not created: not fallen back to


def test_a_manifest_link_that_loops_is_a_clear_error(tmp_path: Path) -> None:
    manifest = tmp_path / paths.MANIFEST_NAME
    manifest.symlink_to(manifest)
    with pytest.raises(ManifestNotFoundError, match="cannot read"):
        load_manifest(manifest)
