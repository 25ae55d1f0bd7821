"""Where a manifest model's files are, and what they say: :class:`ModelFacts`.

The gateway (``/api/tags``, ``/api/show``, ``/api/ps``) and ``mlx-lama show``
(which share it from below both) read a model's facts through here, so they find the same folder: a
``path`` model's own folder, or the cache snapshot of the commit the lock pins
(none until the model is locked and pulled). Reads the disk; never writes,
never downloads.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from mlx_lama.orchestrator.cache import bytes_in
from mlx_lama.orchestrator.state import ModelSpec, snapshot_folder
from mlx_lama.schema.lockfile import LockedModel


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What the cache knows about a model's files."""

    size: int  # bytes on disk
    modified: float  # epoch seconds
    commit: str | None
    config: Mapping[str, Any]  # config.json
    chat_template: str = ""  # the model's own (chat_template below)
    added_tokens: frozenset[str] = frozenset()  # special and control tokens (added_tokens)


def model_folder(spec: ModelSpec, cache_dir: Path) -> Path | None:
    """The folder holding ``spec``'s files: its ``path``, or its locked snapshot when
    that is in the cache. None for a model not resolved or not downloaded."""
    if spec.path is not None:
        return spec.path
    if spec.repo is None or spec.commit is None:
        return None
    folder = snapshot_folder(cache_dir, spec.repo, spec.commit)
    return folder if folder.is_dir() else None


def read_facts(folder: Path | None, locked: LockedModel | None) -> ModelFacts:
    """Size, time, config, chat template and added tokens of the files in ``folder``
    (empty facts without one)."""
    commit = locked.commit if locked else None
    if folder is None:
        return ModelFacts(size=0, modified=0.0, commit=commit, config={})
    size = locked.size if locked and locked.size else bytes_in(folder, follow_links=True)
    return ModelFacts(
        size=size,
        modified=_mtime(folder),
        commit=commit,
        config=read_config(folder),
        chat_template=chat_template(folder),
        added_tokens=added_tokens(folder),
    )


def read_config(folder: Path | None) -> dict[str, Any]:
    """The model's ``config.json`` in ``folder`` ({} without one)."""
    if folder is None:
        return {}
    return _read_json(*_stamped(folder / "config.json"))


def chat_template(folder: Path | None) -> str:
    """The chat template the model's tokenizer files give its engine ("" without one):
    ``chat_template.jinja`` in ``folder``, which transformers puts first, else
    ``tokenizer_config.json``'s ``chat_template`` (a string, or a list of named
    templates, whose texts are joined). Cached by modification time: the gateway
    asks on requests."""
    if folder is None:
        return ""
    text = _read_text(*_stamped(folder / "chat_template.jinja"))
    if text is not None:
        return text
    template = _read_json(*_stamped(folder / "tokenizer_config.json")).get("chat_template")
    if isinstance(template, str):
        return template
    if isinstance(template, list):
        return "\n".join(str(t.get("template", "")) for t in template if isinstance(t, dict))
    return ""


def added_tokens(folder: Path | None) -> frozenset[str]:
    """The texts of the tokens added to the model's vocabulary (special and control
    tokens, such as a code model's fill-in-the-middle ones): from
    ``tokenizer_config.json``'s ``added_tokens_decoder``, else ``tokenizer.json``'s
    ``added_tokens``. Cached by modification time: the gateway asks on requests."""
    if folder is None:
        return frozenset()
    decoder = _read_json(*_stamped(folder / "tokenizer_config.json")).get("added_tokens_decoder")
    if isinstance(decoder, dict) and decoder:
        return frozenset(
            str(token["content"])
            for token in decoder.values()
            if isinstance(token, dict) and "content" in token
        )
    return _tokenizer_added(*_stamped(folder / "tokenizer.json"))


@lru_cache(maxsize=16)
def _tokenizer_added(path: Path, mtime: float) -> frozenset[str]:
    """``added_tokens`` of a tokenizer.json (megabytes: only this set is kept)."""
    del mtime  # part of the cache key only
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return frozenset()
    added = data.get("added_tokens") if isinstance(data, dict) else None
    if not isinstance(added, list):
        return frozenset()
    return frozenset(str(t["content"]) for t in added if isinstance(t, dict) and "content" in t)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _stamped(path: Path) -> tuple[Path, float]:
    """``path`` with its modification time: the key of the read caches below."""
    return path, _mtime(path)


@lru_cache(maxsize=64)
def _read_text(path: Path, mtime: float) -> str | None:
    """A text file (None when missing or unreadable); cached by path and mtime."""
    del mtime  # part of the cache key only
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


@lru_cache(maxsize=256)
def _read_json(path: Path, mtime: float) -> dict[str, Any]:
    """A JSON file as a dict ({} when missing or not JSON); cached by path and mtime."""
    del mtime  # part of the cache key only
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# Files only a sentence-transformers (embedding) model has: its pipeline and its pooling.
EMBEDDING_MARKERS = frozenset({"modules.json", "config_sentence_transformers.json"})


def embedding_files(files: Iterable[str]) -> bool:
    """Whether a repo with ``files`` (paths inside it) is an embedding model: it has a
    sentence-transformers pipeline (the way embedding models on the Hub say so)."""
    return any(path.rsplit("/", 1)[-1] in EMBEDDING_MARKERS for path in files)
