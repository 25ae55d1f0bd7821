"""Ollama Modelfiles: read one, every problem with its ``file:line``.

``mlx-lama create`` calls :func:`parse_modelfile` (pure: text in, a
:class:`ParsedModelfile` or every problem out), then
:mod:`~mlx_lama.schema.modelfile_entry` looks FROM and ADAPTER up and makes
the manifest entry. :mod:`~mlx_lama.schema.modelfile_render` writes an entry
as a Modelfile, quoting values with the rules :func:`value_closed` and
:func:`unquote` hold here, so that this parser reads it back.

Syntax, as Ollama's ``parser/parser.go``: one instruction per line, names in
any case, ``#`` comment lines, a BOM allowed. A value is bare (to the end of
the line, trimmed), ``"quoted"`` or ``\"\"\"multi-line\"\"\"``; a quoted value
ends at the first line end where the text so far ends with its closing
quotes. There are no escapes.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field, fields
from typing import Final, Literal, cast, get_type_hints

from mlx_lama.errors import ManifestError, Problem
from mlx_lama.schema.manifest import Message, Parameters

__all__ = ["ModelfileError", "ParsedModelfile", "parse_modelfile", "unquote", "value_closed"]

INSTRUCTIONS: Final = ("FROM", "PARAMETER", "TEMPLATE", "SYSTEM", "ADAPTER", "LICENSE", "MESSAGE")
ROLES: Final = ("system", "user", "assistant")
Role = Literal["system", "user", "assistant"]

# Ollama instructions mlx-lama cannot honour, and why.
_UNSUPPORTED: Final = {
    "REQUIRES": "mlx-lama does not check Ollama versions; remove the line",
    "DRAFT": "mlx-lama has no speculative-decoding draft model; remove the line",
    "RENDERER": "mlx-lama renders prompts with the model's chat template; use TEMPLATE instead",
    "PARSER": "mlx-lama has no built-in output parsers; remove the line",
}
# Ollama parameters that mlx-lama has no setting for: deprecated ones, and
# llama.cpp load-time options an MLX engine has no equivalent of.
_NO_SUCH_SETTING: Final = frozenset(
    {
        "penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mlock",
        "mirostat", "mirostat_tau", "mirostat_eta",
        "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread", "num_keep", "typical_p",
        "draft_num_predict",
    }
)  # fmt: skip
_WORD = re.compile(r"(\S*)[ \t]*(.*)", re.DOTALL)
_HEADED: Final = ("PARAMETER", "MESSAGE")  # a name or role comes before the value


def _parameter_kinds() -> dict[str, type]:
    """Each Parameters field and the type one PARAMETER line gives it (str for stop)."""
    hints = get_type_hints(Parameters)
    kinds: dict[str, type] = {}
    for f in fields(Parameters):
        text = str(hints[f.name])
        kinds[f.name] = int if "int" in text else float if "float" in text else str
    return kinds


_KINDS: Final = _parameter_kinds()


class ModelfileError(ManifestError):
    """A Modelfile is invalid; lists every problem with its ``file:line``."""


@dataclass(frozen=True, slots=True)
class ParsedModelfile:
    """What a Modelfile says, before FROM and ADAPTER are looked up."""

    source: str  # the file, as errors name it
    base: str  # the FROM value
    base_line: int
    system: str | None = None
    template: str | None = None
    adapter: str | None = None
    adapter_line: int = 0
    license: tuple[str, ...] = ()
    messages: tuple[Message, ...] = ()
    parameters: Parameters = field(default_factory=Parameters)


@dataclass(slots=True)
class _Reader:
    """Collects instructions and problems while :func:`parse_modelfile` walks the lines."""

    source: str
    problems: list[Problem] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)  # once-only key -> line
    values: dict[str, object] = field(default_factory=dict)
    license: list[str] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    parameters: dict[str, object] = field(default_factory=dict)

    def problem(self, line: int, key: str, message: str, hint: str | None = None) -> None:
        self.problems.append(Problem(self.source, line, 1, key, message, hint))

    def once(self, line: int, key: str) -> bool:
        """True the first time ``key`` is set; a repeat is a problem."""
        if key in self.seen:
            self.problem(
                line,
                key,
                f"{key} is given twice (first on line {self.seen[key]})",
                "keep one of them",
            )
            return False
        self.seen[key] = line
        return True

    def instruction(self, line: int, keyword: str, head: str, value: str | None) -> None:
        name = keyword.upper()
        if name in _HEADED:
            if name == "PARAMETER":
                self.parameter(line, head, value)
            else:
                self.message(line, head, value)
            return
        if name not in INSTRUCTIONS:
            if name in _UNSUPPORTED:
                self.problem(line, name, f"mlx-lama cannot honour {name}", _UNSUPPORTED[name])
            else:
                close = difflib.get_close_matches(name, INSTRUCTIONS, n=1)
                guess = f"did you mean {close[0]}? " if close else ""
                self.problem(
                    line,
                    keyword,
                    f"unknown instruction {keyword!r}",
                    f"{guess}use one of {', '.join(INSTRUCTIONS)}",
                )
            return
        if value is None:
            self.problem(line, name, f"{name} needs a value")
            return
        if name == "LICENSE":
            self.license.append(value)
        elif self.once(line, name):
            self.values[name] = value
            self.values[f"{name}_line"] = line

    def parameter(self, line: int, name: str, value: str | None) -> None:
        key = f"PARAMETER {name}".rstrip()
        if not name:
            self.problem(
                line,
                "PARAMETER",
                "PARAMETER needs a name and a value",
                "write PARAMETER NAME VALUE, e.g. PARAMETER temperature 0.7",
            )
            return
        if name in _NO_SUCH_SETTING:
            self.problem(line, key, f"mlx-lama has no such setting as {name!r}", "remove the line")
            return
        kind = _KINDS.get(name)
        if kind is None:
            close = difflib.get_close_matches(name.lower(), list(_KINDS), n=1)
            guess = f"did you mean {close[0]!r}? " if close else ""
            self.problem(
                line, key, f"unknown parameter {name!r}", f"{guess}known: {', '.join(_KINDS)}"
            )
            return
        if value is None:
            self.problem(line, key, f"PARAMETER {name} needs a value")
            return
        converted, why = _convert(name, kind, value)
        if why is not None:
            self.problem(line, key, why)
        elif name == "stop":
            stops = self.parameters.setdefault("stop", [])
            assert isinstance(stops, list)
            stops.append(converted)
        elif self.once(line, key):
            self.parameters[name] = converted

    def message(self, line: int, role: str, text: str | None) -> None:
        if role not in ROLES:
            shown = f"role {role!r}" if role else "no role"
            self.problem(
                line,
                "MESSAGE",
                f"MESSAGE has {shown}",
                f"write MESSAGE ROLE TEXT with ROLE one of {', '.join(ROLES)}",
            )
            return
        if text is None:
            self.problem(line, "MESSAGE", f"MESSAGE {role} needs a text")
            return
        self.messages.append(Message(role=cast(Role, role), content=text))


def parse_modelfile(text: str, source: str = "Modelfile") -> ParsedModelfile:
    """Read a Modelfile; raise :class:`ModelfileError` listing every problem, each
    as ``source:line``. Pure: no I/O (FROM and ADAPTER are looked up later)."""
    lines = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    reader = _Reader(source)
    i = 0
    while i < len(lines):
        start = i + 1
        line = lines[i].lstrip()
        i += 1
        if not line or line.startswith("#"):
            continue
        keyword, args = _first_word(line)
        head, buffer = _first_word(args) if keyword.upper() in _HEADED else ("", args)
        # A quoted value goes on over the next lines until its quotes close.
        while not value_closed(buffer.strip()) and i < len(lines):
            buffer += "\n" + lines[i]
            i += 1
        if not value_closed(buffer.strip()):
            reader.problem(
                start,
                keyword.upper(),
                "this value's quotes are never closed",
                'a value in "..." or """...""" ends where a line ends with its closing quotes',
            )
            break
        value = unquote(buffer.strip()) if buffer.strip() else None
        reader.instruction(start, keyword, head, value)
    values = reader.values
    if "FROM" not in values and not any(p.key_path == "FROM" for p in reader.problems):
        reader.problem(
            1, "FROM", "no FROM line", "add FROM with a model folder, a repo id or a manifest model"
        )
    if reader.problems:
        raise ModelfileError(source, reader.problems)
    return ParsedModelfile(
        source=source,
        base=str(values["FROM"]),
        base_line=_int(values["FROM_line"]),
        system=_text(values.get("SYSTEM")),
        template=_text(values.get("TEMPLATE")),
        adapter=_text(values.get("ADAPTER")),
        adapter_line=_int(values.get("ADAPTER_line", 0)),
        license=tuple(reader.license),
        messages=tuple(reader.messages),
        parameters=Parameters.from_data(reader.parameters),
    )


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def _first_word(text: str) -> tuple[str, str]:
    """The first word of ``text`` and what follows the blanks after it."""
    match = _WORD.match(text)
    assert match is not None  # the pattern matches any text
    return match.group(1), match.group(2)


def value_closed(text: str) -> bool:
    """Whether ``text`` (trimmed) is a complete value: bare, or its quotes closed."""
    if text.startswith('"""'):
        return len(text) >= 6 and text.endswith('"""')
    if text.startswith('"'):
        return len(text) >= 2 and text.endswith('"')
    return True


def unquote(text: str) -> str:
    """The value of a complete ``text`` (trimmed): without its quotes."""
    if text.startswith('"""'):
        return text[3:-3]
    if text.startswith('"'):
        return text[1:-1]
    return text


def _convert(name: str, kind: type, text: str) -> tuple[object, str | None]:
    """``text`` as the parameter's type, range-checked like the manifest; or why not."""
    value: object
    if kind is int:
        try:
            value = int(text.strip(), 10)
        except ValueError:
            return None, f"{text!r} is not a whole number"
    elif kind is float:
        try:
            number = float(text.strip())
        except ValueError:
            return None, f"{text!r} is not a number"
        if not math.isfinite(number):
            return None, f"{text!r} is not a finite number"
        value = number
    else:
        return text, None
    from pydantic import ValidationError

    from mlx_lama.schema import validation

    try:
        validation.Parameters.model_validate({name: value})
    except ValidationError as exc:
        return None, f"{exc.errors()[0]['msg'].lower()} (got {text})"
    return value, None
