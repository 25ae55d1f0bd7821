"""A pulled embedding model is written to the manifest as one (``kind = "embedding"``):
when the built-in alias that named it says so, or when its files do (a
sentence-transformers pipeline), so it is served by the embedding engine at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlx_lama.orchestrator.entries import pull_source, record_pull
from mlx_lama.orchestrator.facts import embedding_files
from mlx_lama.schema import load_manifest
from mlx_lama.schema.lockfile import LockedModel

COMMIT = "0" * 40
WEIGHTS = (("config.json", 10), ("model.safetensors", 100))
SENTENCE_TRANSFORMERS = (*WEIGHTS, ("modules.json", 5), ("1_Pooling/config.json", 5))


@pytest.fixture
def manifest_path(tmp_path: Path) -> Path:
    path = tmp_path / "mlxlama.toml"
    path.write_text("version = 1\n\n# my models\n", encoding="utf-8")
    return path


def test_an_embedding_alias_pulls_an_embedding_model(manifest_path: Path) -> None:
    source = pull_source(load_manifest(manifest_path), "bge-m3")
    assert source.repo == "mlx-community/bge-m3-mlx-4bit" and source.embedding
    assert not pull_source(load_manifest(manifest_path), "qwen3:0.6b").embedding
    locked = LockedModel("bge-m3", str(source.repo), "main", COMMIT, WEIGHTS)
    manifest = record_pull(manifest_path, source, locked)
    assert manifest.models["bge-m3"].kind == "embedding"
    assert manifest.backend_of("bge-m3") == "mlx-embeddings"
    assert "# my models" in manifest_path.read_text()


@pytest.mark.parametrize(("files", "embedding"), [(SENTENCE_TRANSFORMERS, True), (WEIGHTS, False)])
def test_a_repo_says_it_embeds_by_its_files(
    manifest_path: Path, files: tuple[tuple[str, int], ...], embedding: bool
) -> None:
    assert embedding_files(path for path, _ in files) is embedding
    source = pull_source(load_manifest(manifest_path), "org/some-model")
    locked = LockedModel("org/some-model", "org/some-model", "main", COMMIT, files)
    entry = record_pull(manifest_path, source, locked).models["org/some-model"]
    assert entry.kind == ("embedding" if embedding else None)


def test_plan_says_when_a_model_looks_like_an_embedding_model(tmp_path: Path) -> None:
    """Written by hand without kind, an embedding repo would go to mlx-lm and fail to
    load there: the plan says what to add."""
    from mlx_lama.orchestrator.desired import desired
    from mlx_lama.schema import parse_manifest
    from mlx_lama.schema.lockfile import Lock

    text = (
        'version = 1\n[models.vectors]\nrepo = "org/v"\n'
        '[models.marked]\nrepo = "org/m"\nkind = "embedding"\n[models.chat]\nrepo = "org/c"\n'
    )
    lock = Lock(
        (
            LockedModel("chat", "org/c", "main", COMMIT, WEIGHTS),
            LockedModel("marked", "org/m", "main", COMMIT, SENTENCE_TRANSFORMERS),
            LockedModel("vectors", "org/v", "main", COMMIT, SENTENCE_TRANSFORMERS),
        )
    )
    state = desired(parse_manifest(text, "m.toml"), lock, manifest_dir=tmp_path, cache_dir=tmp_path)
    (note,) = state.notes
    assert note.startswith("model vectors looks like an embedding model")
    assert 'add kind = "embedding"' in note
