"""Model aliases: turn a short name such as ``llama3.2:3b`` into a manifest model or a repo id.

Three layers, lowest to highest: the built-in table (``builtin_models.py``: current
mlx-community models under Ollama's library names, plus the earlier mlx-lama's
short names), the user's ``$MLX_LAMA_HOME/registry.yaml`` (read by
``user_aliases.py``), and the manifest's ``[aliases]``. A higher layer hides the
same name below it; names compare case-insensitively with ``:latest`` implied.

Called by the CLI (``mlx-lama aliases``, ``run``, ``pull`` ...) and the gateway
through :func:`load_registry` and :meth:`Registry.resolve`. The manifest layer
arrives as plain data, so this module does not depend on the manifest schema.
It must not import yaml or pydantic at import time (the table is plain Python
so ``import mlx_lama.registry`` stays fast), must not print, and must never
ignore a broken ``registry.yaml``: that raises :class:`ConfigError` (``user_aliases``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final, Literal

from mlx_lama.builtin_models import BUILTIN_TABLE
from mlx_lama.errors import MlxLamaError
from mlx_lama.names import (
    InvalidNameError,
    canonical_name,
    check_model_name,
    is_repo_id,
    parse_model_name,
)
from mlx_lama.user_aliases import Alias, AliasSource, read_user_aliases

__all__ = [
    "BUILTIN_ALIASES",
    "TAG_FALLBACKS",
    "Alias",
    "AliasError",
    "AliasSource",
    "InvalidModelNameError",
    "Registry",
    "Resolution",
    "ResolutionSource",
    "UnknownModelError",
    "load_registry",
    "read_user_aliases",
]

ResolutionSource = Literal["builtin", "user", "manifest", "repo"]

#: Tags tried, in order, for a name given without one (the earlier mlx-lama's rule).
TAG_FALLBACKS: Final = ("latest", "7b", "8b")

_FIX_UNKNOWN: Final = (
    "add it under [models] in mlxlama.toml, or run `mlx-lama aliases` to see known names"
)
_FIX_NAME: Final = (
    "model names look like `llama3.2:3b`, or a Hugging Face repo id like "
    "`mlx-community/Qwen3-4B-4bit`"
)


class UnknownModelError(MlxLamaError):
    """No manifest model, alias or repo id matches the name; lists close names."""

    def __init__(self, name: str, suggestions: Sequence[str] = ()) -> None:
        self.name = name
        self.suggestions = tuple(suggestions)
        message = f"unknown model {name!r}"
        if self.suggestions:
            message += "; did you mean " + ", ".join(repr(s) for s in self.suggestions) + "?"
        super().__init__(message, hint=_FIX_UNKNOWN)


class InvalidModelNameError(MlxLamaError):
    """The name breaks the naming rules (see :mod:`mlx_lama.names`)."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem, hint=_FIX_NAME)


class AliasError(MlxLamaError):
    """A manifest alias loops or points at nothing (the loader normally catches this)."""


@dataclass(frozen=True, slots=True)
class Resolution:
    """What a name resolved to: a manifest ``model`` or a Hugging Face ``repo``.

    ``via`` lists the alias names followed (empty for a direct manifest model or a
    repo id); ``alias`` is the first alias matched, carrying its description and,
    for user aliases, ``default_backend``/``quantization``.
    """

    name: str
    source: ResolutionSource
    model: str | None = None
    repo: str | None = None
    via: tuple[str, ...] = ()
    alias: Alias | None = None

    def __post_init__(self) -> None:
        if (self.model is None) == (self.repo is None):
            raise ValueError("a Resolution has exactly one of model= or repo=")

    @property
    def target(self) -> str:
        """The manifest model name or the repo id."""
        return self.model if self.model is not None else str(self.repo)


#: The built-in layer, as :class:`Alias` objects.
BUILTIN_ALIASES: Final[tuple[Alias, ...]] = tuple(
    Alias(
        name=row.name,
        target=row.repo,
        source="builtin",
        description=row.description,
        quantization=row.quantization,
        kind=row.kind,
    )
    for row in BUILTIN_TABLE
)


# --- the registry ------------------------------------------------------------------------

_LAYERS_HIGH_FIRST: Final[tuple[AliasSource, ...]] = ("manifest", "user", "builtin")


class Registry:
    """The three alias layers plus the manifest's model names, ready to resolve."""

    def __init__(
        self,
        *,
        builtin: Iterable[Alias] = BUILTIN_ALIASES,
        user: Iterable[Alias] = (),
        manifest_aliases: Mapping[str, str] | None = None,
        manifest_models: Collection[str] = (),
    ) -> None:
        manifest_layer = [
            Alias(name=name, target=target, source="manifest")
            for name, target in (manifest_aliases or {}).items()
        ]
        self._layers: dict[AliasSource, dict[str, Alias]] = {
            "builtin": _index_layer(builtin, "builtin"),
            "user": _index_layer(user, "user"),
            "manifest": _index_layer(manifest_layer, "manifest"),
        }
        self._models: dict[str, str] = {}
        for model in manifest_models:
            self._models.setdefault(_key(model), model)

    def entries(self, include_shadowed: bool = False) -> list[Alias]:
        """Effective aliases sorted by name (digits compared as numbers).

        A higher layer (or a manifest model of the same name) hides an alias
        below it; with ``include_shadowed`` the hidden ones are listed too, right
        after the winner, with ``shadowed_by`` naming the layer that hides them.
        """
        keys = set().union(*(layer.keys() for layer in self._layers.values()))
        result: list[Alias] = []
        for key in sorted(keys, key=_natural_key):
            present = [
                self._layers[layer][key]
                for layer in _LAYERS_HIGH_FIRST
                if key in self._layers[layer]
            ]
            winner: AliasSource | None = "manifest" if key in self._models else None
            for alias in present:
                if winner is None:
                    result.append(alias)
                    winner = alias.source
                elif include_shadowed:
                    result.append(replace(alias, shadowed_by=winner))
        return result

    def resolve(self, name: str) -> Resolution:
        """Resolve ``name`` to a manifest model or a repo id.

        Order, for the name and then (only when it has no tag) for each of
        ``name:latest``, ``name:7b``, ``name:8b``: manifest model, manifest alias
        (followed to its model), user alias, built-in alias. A Hugging Face repo id
        that matched nothing passes through. Raises :class:`InvalidModelNameError`,
        :class:`UnknownModelError` or :class:`AliasError`.
        """
        problem = check_model_name(name)
        if problem is not None:
            raise InvalidModelNameError(problem)
        parsed = parse_model_name(name)
        if parsed.tag is None:
            keys = [f"{parsed.path}:{tag}".lower() for tag in TAG_FALLBACKS]
        else:
            keys = [parsed.canonical]
        for key in keys:
            found = self._resolve_key(name, key)
            if found is not None:
                return found
        if is_repo_id(name):
            return Resolution(name=name, source="repo", repo=name)
        raise UnknownModelError(name, self._suggestions(name))

    # -- internals

    def _resolve_key(self, name: str, key: str) -> Resolution | None:
        if key in self._models:
            return Resolution(name=name, source="manifest", model=self._models[key])
        manifest_alias = self._layers["manifest"].get(key)
        if manifest_alias is not None:
            return self._follow_manifest(name, manifest_alias)
        for layer in ("user", "builtin"):
            alias = self._layers[layer].get(key)
            if alias is not None:
                return Resolution(
                    name=name,
                    source=alias.source,
                    repo=alias.target,
                    via=(alias.name,),
                    alias=alias,
                )
        return None

    def _follow_manifest(self, name: str, first: Alias) -> Resolution:
        via: list[str] = []
        seen: set[str] = set()
        current = first
        while True:
            key = _key(current.name)
            if key in seen:
                chain = " -> ".join([*via, current.name])
                raise AliasError(
                    f"manifest aliases form a loop: {chain}",
                    hint="point one of them at a model under [models] in mlxlama.toml",
                )
            seen.add(key)
            via.append(current.name)
            target_key = _key(current.target)
            if target_key in self._models:
                return Resolution(
                    name=name,
                    source="manifest",
                    model=self._models[target_key],
                    via=tuple(via),
                    alias=first,
                )
            following = self._layers["manifest"].get(target_key)
            if following is None:
                raise AliasError(
                    f"manifest alias {current.name!r} points to {current.target!r}, "
                    "which is not a model in the manifest",
                    hint="add that model under [models] in mlxlama.toml, or fix the alias",
                )
            current = following

    def _known_names(self) -> list[str]:
        names = {_key(m): m for m in self._models.values()}
        for layer in reversed(_LAYERS_HIGH_FIRST):
            names.update({key: alias.name for key, alias in self._layers[layer].items()})
        return sorted(names.values(), key=_natural_key)

    def _suggestions(self, name: str, limit: int = 5) -> list[str]:
        """Close names: same family first (llama3.2:70b -> llama3.2:*; phi -> phi4:*),
        then names that merely look alike, most similar first within each group."""
        query = name.lower()
        family = parse_model_name(name).path.lower()
        ranked: list[tuple[int, float, str]] = []
        for known in self._known_names():
            path = _path_of(known)
            ratio = difflib.SequenceMatcher(None, query, known.lower()).ratio()
            if path == family:
                ranked.append((0, -ratio, known))
            elif (len(family) >= 3 and path.startswith(family)) or ratio >= 0.6:
                ranked.append((1, -ratio, known))
        ranked.sort()
        return [known for _group, _ratio, known in ranked[:limit]]


def load_registry(
    *,
    manifest_aliases: Mapping[str, str] | None = None,
    manifest_models: Collection[str] = (),
) -> Registry:
    """A :class:`Registry` with the built-in table, ``paths.registry_file()`` and the
    manifest's aliases and model names. Raises :class:`ConfigError` for a broken
    user file."""
    return Registry(
        user=read_user_aliases(),
        manifest_aliases=manifest_aliases,
        manifest_models=manifest_models,
    )


# --- internals ---------------------------------------------------------------------------


def _index_layer(aliases: Iterable[Alias], layer: AliasSource) -> dict[str, Alias]:
    """Index one layer by canonical name; two spellings of one name are refused."""
    index: dict[str, Alias] = {}
    for alias in aliases:
        key = _key(alias.name)
        if key in index:
            raise AliasError(
                f"{layer} aliases {index[key].name!r} and {alias.name!r} are the same name",
                hint="names ignore case and imply ':latest'; keep one of them",
            )
        index[key] = alias
    return index


def _path_of(name: str) -> str:
    """The part of a name before its tag, lower-cased."""
    try:
        return parse_model_name(name).path.lower()
    except InvalidNameError:
        return name.lower()


def _key(name: str) -> str:
    """Comparison key; a name that cannot be parsed still gets a stable key."""
    try:
        return canonical_name(name)
    except InvalidNameError:
        return name.lower()


_DIGITS: Final = re.compile(r"(\d+)")


def _natural_key(text: str) -> tuple[str, ...]:
    """Sort key comparing digit runs as numbers: qwen3:8b < qwen3:14b, 1.5b < 7b."""
    # re.split with a group alternates text (even indexes) and digit runs (odd ones).
    parts = _DIGITS.split(text.lower())
    return tuple(part.zfill(12) if i % 2 else part for i, part in enumerate(parts))


def name_resolver(
    manifest_aliases: Mapping[str, str], manifest_models: Collection[str]
) -> Callable[[str], tuple[str | None, str | None]]:
    """A name's (manifest model, repo id) through every alias layer, for code below
    this module that must resolve names without importing it (a Modelfile's FROM)."""
    registry = load_registry(manifest_aliases=manifest_aliases, manifest_models=manifest_models)

    def resolve(name: str) -> tuple[str | None, str | None]:
        resolution = registry.resolve(name)
        return resolution.model, resolution.repo

    return resolve
