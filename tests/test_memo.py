"""The validated-manifest memo: unchanged manifests skip pydantic, changed ones never do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_lama.errors import ManifestError
from mlx_lama.schema import load_manifest, parse_manifest
from mlx_lama.schema.manifest import Manifest
from mlx_lama.schema.memo import _entry_path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "mlxlama.toml.example"


def test_plain_data_round_trips_every_field() -> None:
    manifest = parse_manifest(
        EXAMPLE.read_text()
        + '\n[models."forever"]\nrepo = "org/f"\nkeep_alive = -1\n'
        + '[models."forever".parameters]\nstop = ["a", "b"]\nseed = 3\n'
        + '[models."far"]\nbackend = "external"\nurl = "https://box.lan:8443/v1"\n'
    )
    data = manifest.to_data()
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert Manifest.from_data(data) == manifest
    assert Manifest.from_data(data).models["far"].url == "https://box.lan:8443"
    assert data["models"]["lmstudio-qwen"]["url"] == "http://127.0.0.1:1234"
    assert manifest.models["forever"].keep_alive is not None
    assert manifest.models["forever"].keep_alive.forever


def test_second_load_comes_from_the_memo_without_pydantic(tmp_path: Path) -> None:
    path = tmp_path / "mlxlama.toml"
    path.write_text(EXAMPLE.read_text())
    script = (
        "import sys, json\n"
        "from mlx_lama.schema import load_manifest\n"
        f"m = load_manifest({str(path)!r})\n"
        "print(json.dumps({'models': sorted(m.models), 'pydantic': 'pydantic' in sys.modules}))\n"
    )
    runs = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", script], capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(2)
    ]
    assert runs[0]["models"] == runs[1]["models"] == sorted(load_manifest(path).models)
    assert (runs[0]["pydantic"], runs[1]["pydantic"]) == (True, False)


def test_an_edit_is_validated_again(tmp_path: Path) -> None:
    path = tmp_path / "mlxlama.toml"
    path.write_text('version = 1\n[models.a]\nrepo = "org/a"\n')
    assert list(load_manifest(path).models) == ["a"]
    assert _entry_path(path).exists()
    path.write_text('version = 1\n[models.a]\nrepo = "org/a"\nprot = 1\n')
    with pytest.raises(ManifestError, match="unknown key 'prot'"):
        load_manifest(path)
    path.write_text('version = 1\n[models.b]\nrepo = "org/b"\n')
    assert list(load_manifest(path).models) == ["b"]


@pytest.mark.parametrize("damage", ["not json", '{"key": "x"}', '{"key": 1, "data": []}'])
def test_a_damaged_memo_is_ignored(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "mlxlama.toml"
    path.write_text('version = 1\n[models.a]\nrepo = "org/a"\n')
    load_manifest(path)
    _entry_path(path).write_text(damage)
    assert list(load_manifest(path).models) == ["a"]
