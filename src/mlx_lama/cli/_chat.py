"""The interactive chat of ``mlx-lama run``: the ``>>>`` loop and its slash commands.

``cli/run.py`` resolves the model and hands over a
:class:`~mlx_lama.cli._answer.Target`. :class:`Chat` reads lines (``\"\"\"``
starts a multi-line message), sends each turn through
:func:`~mlx_lama.cli._answer.respond`, and runs Ollama's slash commands
(``/set``, ``/show`` from ``cli/_chat_show.py``, ``/load``, ``/clear``,
``/bye``, ``/?``). It never resolves names, pulls, or talks HTTP itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import typing
from collections.abc import Callable, Iterator, Sequence

from mlx_lama.cli._answer import Message, Settings, Target, format_warning, load, respond
from mlx_lama.cli._chat_show import SHOW_HELP, show
from mlx_lama.errors import MlxLamaError
from mlx_lama.schema.manifest import Parameters

PROMPT = ">>> "
CONTINUATION = "... "
QUOTES = '"""'
CTRL_C_HINT = "Use Ctrl + d or /bye to exit."


# -- /set parameter ----------------------------------------------------------------


def parse_parameter(name: str, values: Sequence[str]) -> object:
    """A ``/set parameter NAME VALUE...`` value, typed and range-checked as the
    manifest's ``[parameters]`` are. Raises ValueError with the message to show."""
    kinds = {key: _value_type(hint) for key, hint in typing.get_type_hints(Parameters).items()}
    kind = kinds.get(name)
    if kind is None:
        raise ValueError(f"unknown parameter '{name}' (known: {', '.join(kinds)})")
    if not values:
        raise ValueError(f"no value for parameter '{name}'")
    value: object
    if kind is list:
        value = list(values)
    elif len(values) > 1:
        raise ValueError(f"parameter '{name}' takes one value")
    elif kind is int:
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


def _value_type(hint: object) -> object:
    """``int`` for ``int | None``, ``list`` for ``list[str] | None``: the type a
    parameter's value has when it is set."""
    options = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return typing.get_origin(options[0]) or options[0]


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
            print(show(self.target, self.settings, rest), end="")
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
