"""Generating inside this process: what ``mlx-lama run`` without a daemon uses.

:meth:`Backend.load_session <mlx_lama.backends.base.Backend.load_session>` loads a
model into this process once and returns an :class:`InProcessModel`, which
answers every turn of a chat with :class:`GenerationChunk` pieces (the last one
with :class:`GenerationStats`). :class:`StopScanner` cuts the streamed text at
Ollama's ``stop`` strings. Pure: no I/O.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from mlx_lama.backends.spec import ParameterValue
from mlx_lama.errors import MlxLamaError


@dataclass(frozen=True, slots=True)
class GenerationStats:
    """The final numbers of an in-process generation."""

    prompt_tokens: int
    generated_tokens: int
    tokens_per_second: float
    prompt_tokens_per_second: float
    peak_memory: int  # bytes
    finish_reason: str | None  # "stop" | "length" | None


@dataclass(frozen=True, slots=True)
class GenerationChunk:
    """A piece of generated text; the last one has ``done`` and the stats."""

    text: str
    done: bool = False
    stats: GenerationStats | None = None


class InProcessModel(ABC):
    """A model loaded into this process, answering one request at a time.

    Made by :meth:`Backend.load_session`; ``run`` keeps one for a whole chat so
    the weights are loaded once. ``load_seconds`` is what loading took.
    """

    load_seconds: float = 0.0

    @abstractmethod
    def generate(
        self,
        *,
        messages: Sequence[Mapping[str, str]] | None = None,
        prompt: str | None = None,
        parameters: Mapping[str, ParameterValue] | None = None,
    ) -> Iterator[GenerationChunk]:
        """Stream one answer. ``messages`` go through the model's chat template;
        ``prompt`` is used as it is. Parameters use the manifest's names."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to free by default
        """Let go of the model (its memory is freed once nothing else holds it)."""


class StopScanner:
    """Cuts streamed text at the first of ``stops`` (Ollama's ``stop`` parameter).

    Text that could be the start of a stop string is held back until the next
    piece shows whether it is. Pure: no I/O.
    """

    def __init__(self, stops: Iterable[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """The part of ``held + text`` that is safe to show now."""
        if self.stopped:
            return ""
        if not self._stops:
            return text
        buffer = self._held + text
        hits = [i for i in (buffer.find(s) for s in self._stops) if i >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return buffer[: min(hits)]
        keep = max(_overlap(buffer, s) for s in self._stops)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """What is still held back once the text has ended."""
        held, self._held = self._held, ""
        return "" if self.stopped else held


def _overlap(text: str, stop: str) -> int:
    """The length of the longest end of ``text`` that begins ``stop``."""
    for size in range(min(len(text), len(stop) - 1), 0, -1):
        if stop.startswith(text[-size:]):
            return size
    return 0


class InProcessUnsupportedError(MlxLamaError):
    """The engine can only answer from a server it runs, not inside this process."""

    def __init__(self, backend: str) -> None:
        super().__init__(
            f"the {backend} backend cannot generate in-process",
            hint="start `mlx-lama serve` and run the command again: it sends the request there",
        )
