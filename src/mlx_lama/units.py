"""Durations and sizes as the manifest writes them.

Durations follow Ollama's ``keep_alive``: a number of seconds, or a Go
duration string ("5m", "1h30m", "0"); anything negative means forever. Sizes
are bytes with a unit ("24GB", "512MiB") or a share of physical memory
("75%"). Memory is counted in binary units, as macOS reports it, so "GB" and
"GiB" are both 2**30 bytes. Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import GetCoreSchemaHandler
    from pydantic_core import core_schema


def _parsed_with(parse: Callable[[object], object]) -> core_schema.CoreSchema:
    """A pydantic schema that validates with ``parse`` and serialises with ``str``.
    pydantic is imported here, not at module level: only validation needs it."""
    from pydantic_core import core_schema

    return core_schema.no_info_plain_validator_function(
        parse,
        serialization=core_schema.plain_serializer_function_ser_schema(str, when_used="json"),
    )


_GO_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # micro sign
    "\u03bcs": 1e-6,  # Greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


@dataclass(frozen=True, slots=True)
class Duration:
    """A span of time in seconds; ``math.inf`` means forever."""

    seconds: float

    FOREVER_TEXT = "forever"

    @property
    def forever(self) -> bool:
        return math.isinf(self.seconds)

    @classmethod
    def parse(cls, value: object) -> Duration:
        """Read a duration from TOML: a number of seconds or a Go duration string."""
        if isinstance(value, Duration):
            return value
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError('must be a number of seconds or a duration such as "5m" or "1h30m"')
        if isinstance(value, int | float):
            if math.isnan(value):
                raise ValueError("must be a number of seconds, not NaN")
            return cls(math.inf if value < 0 else float(value))
        return cls._parse_go(value)

    @classmethod
    def _parse_go(cls, text: str) -> Duration:
        body = text.strip()
        sign = 1.0
        if body[:1] in "+-" and body:
            sign = -1.0 if body[0] == "-" else 1.0
            body = body[1:]
        if body == "0":
            return cls(0.0)
        if not body:
            raise ValueError(f"invalid duration {text!r}")
        total, pos = 0.0, 0
        for match in _GO_PART.finditer(body):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _GO_UNITS[match.group(2)]
            pos = match.end()
        if pos != len(body) or pos == 0:
            if re.fullmatch(r"[+-]?\d+(\.\d*)?", text.strip()):
                hint = f"write {text.strip()} without quotes for seconds, or add a unit"
                raise ValueError(f"invalid duration {text!r}: missing unit ({hint})")
            raise ValueError(
                f"invalid duration {text!r}: use units h, m, s, ms (for example "
                '"5m", "1h30m", "90s") or a number of seconds'
            )
        return cls(math.inf if sign < 0 and total > 0 else total)

    def __str__(self) -> str:
        if self.forever:
            return self.FOREVER_TEXT
        remaining = self.seconds
        if remaining == 0:
            return "0s"
        if remaining < 1:
            return f"{round(remaining * 1000, 3):g}ms"
        parts = []
        for unit, size in (("h", 3600), ("m", 60)):
            whole = int(remaining // size)
            if whole:
                parts.append(f"{whole}{unit}")
                remaining -= whole * size
        if remaining or not parts:
            parts.append(f"{remaining:g}s")
        return "".join(parts)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return _parsed_with(cls.parse)


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "kb": 2**10,
    "kib": 2**10,
    "m": 2**20,
    "mb": 2**20,
    "mib": 2**20,
    "g": 2**30,
    "gb": 2**30,
    "gib": 2**30,
    "t": 2**40,
    "tb": 2**40,
    "tib": 2**40,
}
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)")
_PERCENT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*%")


@dataclass(frozen=True, slots=True)
class Size:
    """An amount of memory: absolute bytes, or a percentage of physical memory."""

    bytes: int | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, value: object) -> Size:
        if isinstance(value, Size):
            return value
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError('must be a size such as "24GB" or a share of memory such as "75%"')
        if isinstance(value, int):
            if value <= 0:
                raise ValueError("must be a positive number of bytes")
            return cls(bytes=value)
        text = value.strip()
        if match := _PERCENT.fullmatch(text):
            share = float(match.group(1))
            if not 0 < share <= 100:
                raise ValueError(
                    f"invalid size {value!r}: a percentage must be above 0 and at most 100"
                )
            return cls(percent=share)
        match = _SIZE.fullmatch(text)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _SIZE_UNITS:
            raise ValueError(
                f'invalid size {value!r}: use a number with a unit (B, KB, MB, GB, TB; "24GB") '
                'or a percentage of memory ("75%")'
            )
        amount = int(float(match.group(1)) * _SIZE_UNITS[unit])
        if amount <= 0:
            raise ValueError(f"invalid size {value!r}: must be more than zero")
        return cls(bytes=amount)

    def resolve(self, total_memory: int) -> int:
        """Bytes this size stands for on a machine with ``total_memory`` bytes."""
        if self.bytes is not None:
            return self.bytes
        assert self.percent is not None
        return int(total_memory * self.percent / 100)

    def __str__(self) -> str:
        if self.percent is not None:
            return f"{self.percent:g}%"
        assert self.bytes is not None
        for unit, size in (("TB", 2**40), ("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
            if self.bytes >= size:
                return f"{self.bytes / size:.3g}{unit}"
        return f"{self.bytes}B"

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return _parsed_with(cls.parse)
