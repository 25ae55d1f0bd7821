"""One answer of ``mlx-lama run``: what it talks to, streamed to stdout.

:class:`Target` is a model ready to answer (``cli/_targets.py`` has the two
kinds), :class:`Settings` what a session adds to every request. :func:`respond`
streams an answer to stdout and prints Ollama's ``--verbose`` statistics
(:class:`Stats`) on stderr; the interactive chat (``cli/_chat.py``) and a
one-shot prompt both go through it.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mlx_lama.schema.manifest import ModelEntry

Message = dict[str, str]


# -- statistics ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stats:
    """Ollama's final metrics of one answer; durations in nanoseconds (0: unknown)."""

    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0

    @classmethod
    def from_chunk(cls, chunk: Mapping[str, Any]) -> Stats:
        """The metrics of Ollama's final NDJSON chunk (absent fields are 0)."""

        def number(name: str) -> int:
            value = chunk.get(name)
            return int(value) if isinstance(value, int | float) else 0

        return cls(*(number(f.name) for f in dataclasses.fields(cls)))

    def summary(self) -> str:
        """The block ``ollama run --verbose`` prints, with its labels and units. Pure."""
        lines = []
        if self.total_duration > 0:
            lines.append(f"total duration:       {go_duration(self.total_duration)}")
        if self.load_duration > 0:
            lines.append(f"load duration:        {go_duration(self.load_duration)}")
        if self.prompt_eval_count > 0:
            lines.append(f"prompt eval count:    {self.prompt_eval_count} token(s)")
        if self.prompt_eval_duration > 0:
            rate = self.prompt_eval_count / (self.prompt_eval_duration / 1e9)
            lines.append(f"prompt eval duration: {go_duration(self.prompt_eval_duration)}")
            lines.append(f"prompt eval rate:     {rate:.2f} tokens/s")
        if self.eval_count > 0:
            lines.append(f"eval count:           {self.eval_count} token(s)")
        if self.eval_duration > 0:
            rate = self.eval_count / (self.eval_duration / 1e9)
            lines.append(f"eval duration:        {go_duration(self.eval_duration)}")
            lines.append(f"eval rate:            {rate:.2f} tokens/s")
        return "".join(line + "\n" for line in lines)


def go_duration(nanoseconds: int) -> str:
    """A duration as Go's ``time.Duration.String`` writes it (``1.5s``, ``12.3ms``,
    ``1m2.5s``), which is how Ollama prints its timings. Pure."""
    sign, ns = ("-", -nanoseconds) if nanoseconds < 0 else ("", nanoseconds)
    if ns == 0:
        return "0s"
    if ns < 1_000_000_000:
        for unit, scale, digits in (("ms", 1_000_000, 6), ("µs", 1_000, 3), ("ns", 1, 0)):
            if ns >= scale:
                return sign + _fraction(ns, digits) + unit
    seconds = _fraction(ns, 9)
    whole, _, frac = seconds.partition(".")
    minutes, secs = divmod(int(whole), 60)
    hours, minutes = divmod(minutes, 60)
    text = f"{secs}{'.' + frac if frac else ''}s"
    if minutes or hours:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return sign + text


def _fraction(value: int, digits: int) -> str:
    """``value / 10**digits`` with trailing zeros (and a bare point) dropped."""
    if digits == 0:
        return str(value)
    whole, frac = divmod(value, 10**digits)
    text = str(frac).rjust(digits, "0").rstrip("0")
    return f"{whole}.{text}" if text else str(whole)


# -- the target and one answer ------------------------------------------------------


@dataclass(slots=True)
class Settings:
    """What a session adds to every request: ``/set`` values and the command's options."""

    options: dict[str, object] = field(default_factory=dict)  # /set parameter, manifest names
    system: str | None = None  # /set system
    format: str | None = None  # --format json, /set format json
    keep_alive: str | None = None  # --keepalive (a Go duration)
    verbose: bool = False


Event = str | Stats  # a piece of the answer, or the final statistics


class Target(Protocol):
    """A model ready to answer: through the daemon, or loaded in this process."""

    name: str  # the manifest's key
    entry: ModelEntry  # its manifest entry
    parameters: Mapping[str, object]  # [defaults] parameters under the entry's own
    folder: Path | None  # the model's files (None: external)
    where: str  # "in this process", "the daemon at URL": for /show info
    in_process: bool

    def load(self, keep_alive: str | None = None) -> None:
        """Have the model loaded (raises MlxLamaError when it cannot be); the daemon
        keeps it for ``keep_alive`` (a Go duration) when given."""

    def reply(
        self, messages: Sequence[Message], settings: Settings
    ) -> Generator[Event, None, None]:
        """Stream the answer to ``messages`` (the conversation so far)."""

    def close(self) -> None:
        """Let go of the model (in-process) or the connection (daemon)."""


def conversation(messages: Sequence[Message], settings: Settings) -> list[Message]:
    """What is sent: the session's system prompt (if set) and the turns. Pure."""
    system = [{"role": "system", "content": settings.system}] if settings.system else []
    return [*system, *messages]


def respond(target: Target, messages: Sequence[Message], settings: Settings, *, end: str) -> str:
    """Stream one answer to stdout as it arrives, then ``end``; the statistics go to
    stderr with ``verbose``. Returns the answer. Ctrl-C and errors propagate after
    the line is ended; the stream is closed either way (the daemon then stops)."""
    events = target.reply(conversation(messages, settings), settings)
    pieces: list[str] = []
    stats: Stats | None = None
    try:
        for event in events:
            if isinstance(event, Stats):
                stats = event
            elif event:
                sys.stdout.write(event)
                sys.stdout.flush()
                pieces.append(event)
    except BaseException:
        if pieces:
            sys.stdout.write("\n")
            sys.stdout.flush()
        raise
    finally:
        events.close()
    sys.stdout.write(end)
    sys.stdout.flush()
    if settings.verbose and stats is not None:
        sys.stderr.write(stats.summary())
        sys.stderr.flush()
    return "".join(pieces)


def load(target: Target, settings: Settings) -> None:
    """Load the model, saying so on a terminal (a big model takes a while)."""
    shown = sys.stderr.isatty()
    if shown:
        sys.stderr.write(f"loading {target.name} ...")
        sys.stderr.flush()
    try:
        target.load(settings.keep_alive)
    finally:
        if shown:
            sys.stderr.write("\r\x1b[K")  # the line is erased again
            sys.stderr.flush()


def format_warning(target: Target, settings: Settings) -> str | None:
    """Why ``format`` will not be enforced, or None."""
    if settings.format and target.in_process:
        return (
            f"--format {settings.format} is not enforced in-process (mlx-lm cannot constrain "
            "its output); with `mlx-lama serve` running, the request goes there"
        )
    return None
