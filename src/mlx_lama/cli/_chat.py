"""The conversation side of ``mlx-lama run``: one streamed answer, or an interactive chat.

``cli/run.py`` resolves the model and hands over a :class:`Target` (the
daemon's Ollama API, or a model loaded in this process). This module streams
answers to stdout, prints Ollama's ``--verbose`` statistics on stderr, and
runs the ``>>>`` loop with Ollama's slash commands (``/set``, ``/show``,
``/load``, ``/clear``, ``/bye``, ``/?``) and ``\"\"\"`` multi-line input. It
never resolves names, pulls, or talks HTTP itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mlx_lama.errors import MlxLamaError
from mlx_lama.schema.manifest import ModelEntry, Parameters

PROMPT = ">>> "
CONTINUATION = "... "
QUOTES = '"""'
CTRL_C_HINT = "Use Ctrl + d or /bye to exit."

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


# -- what the chat talks to ------------------------------------------------------


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


# -- /set parameter ----------------------------------------------------------------


def parse_parameter(name: str, values: Sequence[str]) -> object:
    """A ``/set parameter NAME VALUE...`` value, typed and range-checked as the
    manifest's ``[parameters]`` are. Raises ValueError with the message to show."""
    kinds = {f.name: str(f.type) for f in dataclasses.fields(Parameters)}
    kind = kinds.get(name)
    if kind is None:
        raise ValueError(f"unknown parameter '{name}' (known: {', '.join(kinds)})")
    if not values:
        raise ValueError(f"no value for parameter '{name}'")
    value: object
    if kind.startswith("list"):
        value = list(values)
    elif len(values) > 1:
        raise ValueError(f"parameter '{name}' takes one value")
    elif kind.startswith("int"):
        try:
            value = int(values[0])
        except ValueError:
            raise ValueError(f"parameter '{name}' must be a whole number") from None
    else:
        try:
            value = float(values[0])
        except ValueError:
            raise ValueError(f"parameter '{name}' must be a number") from None
    from pydantic import ValidationError

    from mlx_lama.schema.validation import Parameters as CheckedParameters

    try:
        CheckedParameters.model_validate({name: value})
    except ValidationError as error:
        raise ValueError(f"{name}: {error.errors()[0]['msg']}") from None
    return value


# -- the interactive loop -------------------------------------------------------------

HELP = f"""Available Commands:
  /set            Set session variables
  /show           Show model information
  /load <model>   Load a model (the conversation starts over)
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command

Use {QUOTES} to begin a multi-line message.
"""

SET_HELP = """Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set format json       Enable JSON mode
  /set noformat          Disable formatting
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
"""

SHOW_HELP = """Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template
"""


class Chat:
    """The ``>>>`` loop. ``open_model`` resolves ``/load NAME`` to a new target."""

    def __init__(
        self, target: Target, settings: Settings, open_model: Callable[[str], Target]
    ) -> None:
        self.target = target
        self.settings = settings
        self.open_model = open_model
        self.messages: list[Message] = []

    def run(self) -> None:
        """Chat until /bye or Ctrl-D."""
        with _line_editing():
            load(self.target, self.settings)
            while True:
                try:
                    text = self._read()
                except EOFError:
                    print()
                    return
                except KeyboardInterrupt:
                    print(f"\n{CTRL_C_HINT}\n")
                    continue
                if text.startswith("/"):
                    if not self._command(text.strip()):
                        return
                elif text.strip():
                    self._send(text)

    # -- input

    def _read(self) -> str:
        line = input(PROMPT)
        if not line.lstrip().startswith(QUOTES):
            return line
        return self._multiline(line.lstrip()[len(QUOTES) :])

    def _multiline(self, first: str) -> str:
        """The text after an opening ``\"\"\"`` up to the line ending in one."""
        if first.endswith(QUOTES):
            return first[: -len(QUOTES)]
        lines = [first]
        while True:
            line = input(CONTINUATION)
            if line.endswith(QUOTES):
                lines.append(line[: -len(QUOTES)])
                return "\n".join(lines)
            lines.append(line)

    # -- a turn

    def _send(self, text: str) -> None:
        turn = [*self.messages, {"role": "user", "content": text}]
        try:
            answer = respond(self.target, turn, self.settings, end="\n\n")
        except KeyboardInterrupt:  # stop this answer; the question is forgotten
            print()
            return
        except MlxLamaError as error:
            print(f"error: {error}", file=sys.stderr)
            return
        self.messages = [*turn, {"role": "assistant", "content": answer}]

    # -- commands

    def _command(self, line: str) -> bool:
        """Run a slash command; False ends the chat."""
        word, _, rest = line.partition(" ")
        rest = rest.strip()
        if word == "/bye":
            return False
        if word in ("/?", "/help"):
            print({"set": SET_HELP, "show": SHOW_HELP}.get(rest.lstrip("/"), HELP))
        elif word == "/clear":
            self.messages = []
            print("Cleared session context")
        elif word == "/set":
            self._set(rest)
        elif word == "/show":
            print(self._show(rest), end="")
        elif word == "/load":
            self._load(rest)
        else:
            print(f"Unknown command '{word}'. Type /? for help")
        return True

    def _set(self, rest: str) -> None:
        what, _, value = rest.partition(" ")
        settings = self.settings
        if what == "parameter":
            name, *values = value.split()
            self._set_parameter(name if value.strip() else "", values)
        elif what == "system":
            text = value.strip()
            if text.startswith(QUOTES):
                text = self._multiline(text[len(QUOTES) :])
            settings.system = text or None
            print("Set system message." if text else "Cleared system message.")
        elif what == "format" and value.strip() == "json":
            settings.format = "json"
            print("Set format to 'json' mode.")
            warning = format_warning(self.target, settings)
            if warning:
                print(f"warning: {warning}", file=sys.stderr)
        elif what == "noformat":
            settings.format = None
            print("Disabled format.")
        elif what in ("verbose", "quiet"):
            settings.verbose = what == "verbose"
            print("Set 'verbose' mode." if settings.verbose else "Set 'quiet' mode.")
        else:
            print(SET_HELP)

    def _set_parameter(self, name: str, values: list[str]) -> None:
        if not name:
            names = ", ".join(f.name for f in dataclasses.fields(Parameters))
            print(f"Usage: /set parameter NAME VALUE\nParameters: {names}")
            return
        try:
            value = parse_parameter(name, values)
        except ValueError as error:
            print(f"Couldn't set parameter: {error}")
            return
        self.settings.options[name] = value
        print(f"Set parameter '{name}' to '{', '.join(values)}'")

    def _load(self, name: str) -> None:
        if not name:
            print("Usage: /load <model>")
            return
        print(f"Loading model '{name}'")
        try:
            target = self.open_model(name)
            load(target, self.settings)
        except MlxLamaError as error:
            print(f"error: {error}", file=sys.stderr)
            return
        self.target.close()
        self.target = target
        self.messages = []

    def _show(self, what: str) -> str:
        target, settings = self.target, self.settings
        entry = effective_entry(target)
        system = settings.system or entry.system
        if what == "info":
            return show_info(target, settings)
        if what == "parameters":
            return show_parameters(entry, settings.options)
        if what == "system":
            return f"{system}\n" if system else "No system message was specified for this model.\n"
        if what == "template":
            template = entry.template or chat_template(target.folder)
            return (
                f"{template}\n"
                if template
                else "No prompt template was specified for this model.\n"
            )
        if what == "modelfile":
            from mlx_lama.schema.modelfile import render_modelfile

            return render_modelfile(target.name, entry, system=system)
        if what == "license":
            license_text = "\n".join(getattr(entry, "license", None) or [])
            return (
                f"{license_text}\n"
                if license_text
                else "No license was specified for this model.\n"
            )
        return SHOW_HELP


# -- /show ----------------------------------------------------------------------------


def effective_entry(target: Target) -> ModelEntry:
    """The entry with ``[defaults]`` parameters under its own, as requests get them."""
    parameters = Parameters.from_data(dict(target.parameters))
    return dataclasses.replace(target.entry, parameters=parameters)


def show_parameters(entry: ModelEntry, options: Mapping[str, object]) -> str:
    """``/show parameters``: the manifest's, then the session's. Pure."""
    from mlx_lama.schema.modelfile import parameter_lines

    model = parameter_lines(entry)
    user = parameter_lines(ModelEntry(parameters=Parameters.from_data(dict(options))))
    if not model and not user:
        return "No parameters were specified for this model.\n"
    text = ""
    if model:
        text += "Model defined parameters:\n" + "".join(_row(line) for line in model)
    if user:
        text += "User defined parameters:\n" + "".join(_row(line) for line in user)
    return text


def _row(line: str) -> str:
    name, _, value = line.partition(" ")
    return f"{name:<30} {value}\n"


def show_info(target: Target, settings: Settings) -> str:
    """``/show info``: where the model comes from and runs, its architecture, its
    parameters and system prompt."""
    entry = effective_entry(target)
    config = _read_json(target.folder / "config.json") if target.folder else {}
    quantization = config.get("quantization")
    rows = [
        ("name", target.name),
        ("source", entry.repo or entry.path or entry.url or ""),
        ("architecture", str(config.get("model_type", ""))),
        ("context length", str(config.get("max_position_embeddings", ""))),
        ("embedding length", str(config.get("hidden_size", ""))),
        (
            "quantization",
            f"{quantization.get('bits')}-bit" if isinstance(quantization, dict) else "",
        ),
        ("runs", target.where),
    ]
    text = "  Model\n" + "".join(f"    {k:<18}{v}\n" for k, v in rows if v)
    from mlx_lama.schema.modelfile import parameter_lines

    params = parameter_lines(entry) + [
        f"{k} {v}" for k, v in settings.options.items() if not isinstance(v, list)
    ]
    if params:
        text += "\n  Parameters\n" + "".join(
            f"    {n:<18}{v}\n" for n, _, v in (p.partition(" ") for p in params)
        )
    system = settings.system or entry.system
    if system:
        text += "\n  System\n" + "".join(f"    {line}\n" for line in system.splitlines())
    license_lines = getattr(entry, "license", None) or []
    if license_lines:
        first = str(license_lines[0]).splitlines()[0] if str(license_lines[0]) else ""
        text += f"\n  License\n    {first}\n"
    return text + "\n"


def chat_template(folder: Path | None) -> str | None:
    """The chat template the model's tokenizer files carry, if any."""
    if folder is None:
        return None
    template = _read_json(folder / "tokenizer_config.json").get("chat_template")
    if isinstance(template, str):
        return template
    with contextlib.suppress(OSError):
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def _line_editing() -> Iterator[None]:
    """GNU readline line editing and history for ``input()`` (where Python has it),
    the history kept in ``$MLX_LAMA_HOME/history`` like Ollama's."""
    try:
        import readline
    except ImportError:  # Windows, or a Python built without it: plain input()
        yield
        return
    from mlx_lama import paths

    history = paths.home() / "history"
    with contextlib.suppress(OSError):
        readline.read_history_file(history)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            history.parent.mkdir(parents=True, exist_ok=True)
            readline.set_history_length(1000)
            readline.write_history_file(history)
