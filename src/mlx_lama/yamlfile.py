"""Read the user's YAML files (``config.yaml``, ``registry.yaml``) strictly.

Shared by :mod:`mlx_lama.config` and :mod:`mlx_lama.registry`. PyYAML is
imported on first use only, and nothing heavier: the registry must stay cheap
to import. Every problem is a :class:`ConfigError` naming the file and line.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from mlx_lama.errors import ConfigError

if TYPE_CHECKING:
    import yaml

_MERGE_TAG: Final = "tag:yaml.org,2002:merge"


def read_yaml_file(path: Path) -> Any:
    """Parse ``path`` as YAML with the safe loader; ``None`` for an empty file.

    Duplicate keys in a mapping are refused (PyYAML would silently keep the
    last one). Any read or syntax problem raises :class:`ConfigError` naming the
    file (and line, when known).
    """
    return read_yaml_file_with_lines(path)[0]


def read_yaml_file_with_lines(path: Path) -> tuple[Any, dict[Any, int]]:
    """:func:`read_yaml_file`'s data, and the line (from 1) of each key of its top-level
    mapping, so a caller can name the line of a bad value (empty when it is no mapping)."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text", hint=f"save {path} as UTF-8 YAML") from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror or exc}",
            hint=f"check that {path} is a readable file",
        ) from None
    loader = _strict_loader()(text)
    try:
        node = loader.get_single_node()
        data = None if node is None else loader.construct_document(node)
        lines: dict[Any, int] = {}
        if isinstance(node, yaml.MappingNode):
            for key_node, _value in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                    key = loader.construct_object(key_node)
                    if isinstance(key, Hashable):
                        lines.setdefault(key, key_node.start_mark.line + 1)
        return data, lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(
            f"{where}: not valid YAML: {problem}", hint=f"fix the YAML syntax in {path}"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"{path}: not valid YAML: {exc}", hint=f"fix the YAML syntax in {path}"
        ) from None
    finally:
        loader.dispose()


@functools.cache
def _strict_loader() -> type[yaml.SafeLoader]:
    """A SafeLoader that refuses duplicate mapping keys (built once, on first use)."""
    import yaml

    class StrictSafeLoader(yaml.SafeLoader):
        def construct_mapping(
            self, node: yaml.MappingNode, deep: bool = False
        ) -> dict[Hashable, Any]:
            seen: set[Any] = set()
            for key_node, _value in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue  # '<<' merges may legitimately repeat keys
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:
                    continue  # unhashable: the base class reports it
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping",
                        node.start_mark,
                        f"the key {key!r} appears twice",
                        key_node.start_mark,
                    )
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return StrictSafeLoader
