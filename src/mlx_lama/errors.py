"""The exceptions mlx-lama raises.

Library code raises these; only the CLI turns them into a message and an exit
code (``cli/_errors.py``). Every message should name the fix.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


class MlxLamaError(Exception):
    """Base of every error mlx-lama reports to a user."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(MlxLamaError):
    """The command line itself is wrong (exit code 2)."""

    exit_code = 2


class ConfigError(MlxLamaError):
    """``config.yaml``, ``registry.yaml`` or an ``MLX_LAMA_*`` variable is invalid.

    A usage error (exit code 2): the user's own setting is wrong, as a bad flag would be.
    """

    exit_code = 2


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in a manifest, located as precisely as we can."""

    file: str
    line: int
    col: int
    key_path: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}"
        key = f" {self.key_path}:" if self.key_path else ""
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}:{key} {self.message}{hint}"


class ManifestError(MlxLamaError):
    """A manifest could not be read or is invalid; lists every problem found."""

    def __init__(self, path: Path | str, problems: Iterable[Problem]) -> None:
        self.path = Path(path)
        self.problems = tuple(sorted(problems, key=lambda p: (p.line, p.col, p.key_path)))
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        lines = [f"{self.path}: {count} {noun}:"] + [f"  {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class ManifestNotFoundError(MlxLamaError):
    """A manifest that was asked for by name does not exist."""
