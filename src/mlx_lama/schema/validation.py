"""The manifest's trust boundary: pydantic models generated from ``manifest.py``.

The manifest is declared once, as the dataclasses in ``manifest.py``: their
types, defaults and, in ``Annotated`` metadata, what ``constraints.py``
requires beyond the types. :func:`model_of` generates the pydantic model of
each table from them, where every table forbids unknown keys and types are
strict (``port = "8080"`` is an error, not a guess). Only the loader uses
:data:`Manifest`, and only when a manifest's text is new to it; the rest of
mlx-lama works with the dataclasses. Checks that span entries live in
``checks.py``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, create_model

from mlx_lama.schema import manifest
from mlx_lama.schema.constraints import Bounds, Check, OneOrMany, one_or_many


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


_MODELS: dict[type[Any], type[BaseModel]] = {}


def model_of(table: type[Any]) -> type[BaseModel]:
    """The pydantic model of the manifest dataclass ``table``, the models of the
    tables inside it included (each made once)."""
    made = _MODELS.get(table)
    if made is not None:
        return made
    hints = typing.get_type_hints(table, include_extras=True)
    fields: dict[str, Any] = {}
    for item in dataclasses.fields(table):
        if item.metadata.get(manifest.NOT_IN_FILE):
            continue  # filled in by the loader from the user's settings, not a key
        if item.default_factory is not dataclasses.MISSING:
            default: Any = Field(default_factory=item.default_factory)
        elif _is_table(type(item.default)):
            # A table's default is the table with every key left out.
            kind: type[Any] = type(item.default)
            assert item.default == kind(), f"{table.__name__}.{item.name}"
            default = Field(default_factory=model_of(kind))
        elif item.default is dataclasses.MISSING:
            default = ...
        else:
            default = item.default
        fields[item.name] = (_pydantic(hints[item.name]), default)
    model: type[BaseModel] = create_model(
        table.__name__, __base__=_Table, __doc__=table.__doc__, **fields
    )
    _MODELS[table] = model
    return model


def _pydantic(annotation: Any) -> Any:
    """``annotation`` with each manifest table replaced by its model and each
    constraint by its pydantic form."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return typing.Annotated[(_pydantic(args[0]), *map(_constraint, args[1:]))]
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(map(_pydantic, args))]  # noqa: UP007 (built from a tuple)
    if origin in (list, dict):
        return origin[tuple(map(_pydantic, args))]
    if _is_table(annotation):
        return model_of(annotation)
    return annotation


def _is_table(annotation: Any) -> bool:
    """A manifest table (a dataclass of ``manifest.py``; ``Duration`` and ``Size`` are
    values, validated by their own schema)."""
    return (
        isinstance(annotation, type)
        and dataclasses.is_dataclass(annotation)
        and annotation.__module__ == manifest.__name__
    )


def _constraint(marker: object) -> object:
    if isinstance(marker, Bounds):
        return Field(ge=marker.ge, le=marker.le)  # None: that end is open
    if isinstance(marker, Check):
        return AfterValidator(marker.check)
    if isinstance(marker, OneOrMany):
        return BeforeValidator(one_or_many)
    return marker


Manifest = model_of(manifest.Manifest)
Parameters = model_of(manifest.Parameters)  # for one parameter set in a chat (`/set`)
