"""What the manifest's fields require beyond their types: ranges, checks, shorthands.

``manifest.py`` declares each field once, with these in its ``Annotated``
metadata (``port: Annotated[int, Bounds(ge=1, le=65535)]``). They are plain
objects, so code that only reads a manifest (from the loader's memo) never
imports pydantic; ``validation.py`` turns each into its pydantic form when a
manifest's text has to be validated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

_URL_EXAMPLE = 'as in url = "http://127.0.0.1:1234"'


@dataclass(frozen=True, slots=True)
class Bounds:
    """A number's range, ends included (None: open)."""

    ge: float | None = None
    le: float | None = None


@dataclass(frozen=True, slots=True)
class Check:
    """A check after the type's: ``check(value)`` returns the value (normalised) or
    raises ValueError whose message says what is wrong and how to fix it."""

    check: Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class OneOrMany:
    """A list that may be written as one string: Modelfiles repeat ``PARAMETER stop``
    and ``LICENSE``, and in TOML one string is the common slip."""


def one_or_many(value: object) -> object:
    return [value] if isinstance(value, str) else value


def server_url(text: str) -> str:
    """An external server's root URL, normalised: a trailing ``/`` and ``/v1`` are
    dropped (OpenAI clients write the base URL with ``/v1``; mlx-lama adds it).
    http or https, a host, no credentials, query or fragment. Raises ValueError
    whose message ends with a "(hint)". Pure."""
    if text != text.strip() or any(c.isspace() for c in text):
        raise ValueError(f"url {text!r} contains spaces (remove them)")
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises on a port that is not a number in range
    except ValueError:
        raise ValueError(f"url {text!r} is not a valid URL ({_URL_EXAMPLE})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"url {text!r} must start with http:// or https:// ({_URL_EXAMPLE})")
    if not parts.hostname:
        raise ValueError(f"url {text!r} has no host ({_URL_EXAMPLE})")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"url {text!r} contains a user name or password "
            "(credentials in the url are not supported; remove them)"
        )
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ValueError(
            f"url {text!r} has a query or fragment "
            '(give the server\'s root, as in "http://127.0.0.1:1234")'
        )
    path = parts.path.rstrip("/")
    path = path.removesuffix("/v1").rstrip("/")
    return f"{scheme}://{parts.netloc}{path}"
