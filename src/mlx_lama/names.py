"""Model names: Ollama's ``[host/][namespace/]model[:tag]`` form or a Hugging Face repo id.

A name ends up in URLs, file names and log paths, so everything that could
escape a folder (``..``, absolute paths, backslashes, empty parts) is refused
here, before a name touches anything. Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_TAG = "latest"

_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}")
_MODEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
_REPO_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


class InvalidNameError(ValueError):
    """A model name breaks the naming rules; the message says which one."""


@dataclass(frozen=True, slots=True)
class ModelName:
    """A parsed model name. ``tag`` is None when the name had none."""

    host: str | None
    namespace: str | None
    model: str
    tag: str | None

    @property
    def path(self) -> str:
        """Everything before the tag: ``ns/model`` or ``host/ns/model``."""
        return "/".join(p for p in (self.host, self.namespace, self.model) if p)

    @property
    def full(self) -> str:
        """The name with its tag, defaulting to ``latest``."""
        return f"{self.path}:{self.tag or DEFAULT_TAG}"

    @property
    def canonical(self) -> str:
        """Comparison key: case-insensitive, ``:latest`` implied (as Ollama matches)."""
        return self.full.lower()


def parse_model_name(text: str) -> ModelName:
    """Parse ``text`` as a model name or raise :class:`InvalidNameError`."""
    if not isinstance(text, str) or not text:
        raise InvalidNameError("a model name cannot be empty")
    for bad, why in (
        ("\\", "backslashes are not allowed"),
        ("..", "'..' is not allowed"),
    ):
        if bad in text:
            raise InvalidNameError(f"invalid model name {text!r}: {why}")
    if any(ch.isspace() for ch in text):
        raise InvalidNameError(f"invalid model name {text!r}: whitespace is not allowed")
    if text.startswith(("/", "~")):
        raise InvalidNameError(f"invalid model name {text!r}: a name is not a path")

    # A ':' is the tag separator only after the last '/' (Ollama's rule).
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        path, tag = text[:colon], text[colon + 1 :]
        if not tag:
            raise InvalidNameError(f"invalid model name {text!r}: the tag after ':' is empty")
        if not _TAG.fullmatch(tag):
            raise InvalidNameError(
                f"invalid model name {text!r}: tag {tag!r} may only use letters, digits, "
                "'_', '.' and '-', starting with a letter, digit or '_'"
            )
    else:
        path, tag = text, None

    parts = path.split("/")
    if any(not p for p in parts):
        raise InvalidNameError(f"invalid model name {text!r}: it has an empty part")
    if len(parts) > 3:
        raise InvalidNameError(
            f"invalid model name {text!r}: use name[:tag], namespace/name[:tag] "
            "or host/namespace/name[:tag]"
        )
    host = parts[0] if len(parts) == 3 else None
    namespace = parts[-2] if len(parts) >= 2 else None
    model = parts[-1]
    if host is not None and not _HOST.fullmatch(host):
        raise InvalidNameError(f"invalid model name {text!r}: bad host {host!r}")
    if namespace is not None and not _NAMESPACE.fullmatch(namespace):
        raise InvalidNameError(
            f"invalid model name {text!r}: namespace {namespace!r} may only use letters, "
            "digits, '_', '.' and '-'"
        )
    if not _MODEL.fullmatch(model):
        raise InvalidNameError(
            f"invalid model name {text!r}: {model!r} may only use letters, digits, "
            "'_', '.' and '-', starting with a letter, digit or '_'"
        )
    return ModelName(host=host, namespace=namespace, model=model, tag=tag)


def check_model_name(text: str) -> str | None:
    """Return why ``text`` is not a valid model name, or None when it is."""
    try:
        parse_model_name(text)
    except InvalidNameError as exc:
        return str(exc)
    return None


def canonical_name(text: str) -> str:
    """The comparison key of a valid name (lower case, ``:latest`` implied)."""
    return parse_model_name(text).canonical


def is_repo_id(text: str) -> bool:
    """True for a Hugging Face repo id such as ``mlx-community/Qwen3-4B-4bit``.

    Exactly ``namespace/name``, no tag, no ``--`` or ``..``, not ending in
    ``.git`` (huggingface_hub's own rules).
    """
    parts = text.split("/")
    if len(parts) != 2 or "--" in text or ".." in text or text.endswith(".git"):
        return False
    return all(_REPO_PART.fullmatch(p) for p in parts)
