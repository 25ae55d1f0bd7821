"""Ollama Modelfiles: read one into a manifest entry, and write an entry as one.

``mlx-lama create`` calls :func:`parse_modelfile` (pure: text in, every
problem with its ``file:line`` out), then :func:`modelfile_entry` (resolves
FROM and ADAPTER against the disk, the manifest and the alias registry) and
:func:`model_fields` (the ordered keys the editor writes). The gateway's
``/api/show`` and ``mlx-lama show --modelfile`` call :func:`render_modelfile`;
what it writes, the parser reads back to the same entry, except for the keys
a Modelfile has no words for (backend, serve, port, keep_alive, pin, args, env).
A repo pinned to a revision is written ``FROM org/name@revision``, a form only
mlx-lama reads.

Syntax, as Ollama's ``parser/parser.go``: one instruction per line, names in
any case, ``#`` comment lines, a BOM allowed. A value is bare (to the end of
the line, trimmed), ``"quoted"`` or ``\"\"\"multi-line\"\"\"``; a quoted value
ends at the first line end where the text so far ends with its closing
quotes. There are no escapes, so a text holding three double quotes cannot be
written (:class:`ModelfileRenderError`).

Paths (FROM a folder, ADAPTER) are relative to the Modelfile's folder, with
``~`` expanded. They are stored in the manifest as ``./relative`` when they lie
under the manifest's folder (the manifest stays movable with its models), as
written when they start with ``~``, and absolute otherwise.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Final, Literal, cast, get_type_hints

from mlx_lama.errors import ManifestError, MlxLamaError, Problem
from mlx_lama.names import check_model_name, is_repo_id
from mlx_lama.schema.manifest import Manifest, Message, ModelEntry, Parameters

__all__ = [
    "MODELFILE_KEYS",
    "ModelfileError",
    "ModelfileRenderError",
    "ParsedModelfile",
    "model_fields",
    "modelfile_entry",
    "parameter_lines",
    "parse_modelfile",
    "render_modelfile",
]

#: The model keys a Modelfile decides, in the order ``model_fields`` writes them.
MODELFILE_KEYS: Final = (
    "repo", "path", "url", "revision", "backend",
    "system", "template", "adapter", "license", "messages", "parameters",
)  # fmt: skip

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
_FROM_HINT = (
    "FROM takes a folder of MLX weights (relative to the Modelfile), a Hugging Face repo id "
    "(org/name), or a model or alias of the manifest"
)


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


class ModelfileRenderError(MlxLamaError):
    """An entry holds text a Modelfile cannot express."""


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


# -- parsing -----------------------------------------------------------------------


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
        while not _closed(buffer.strip()) and i < len(lines):
            buffer += "\n" + lines[i]
            i += 1
        if not _closed(buffer.strip()):
            reader.problem(
                start,
                keyword.upper(),
                "this value's quotes are never closed",
                'a value in "..." or """...""" ends where a line ends with its closing quotes',
            )
            break
        value = _unquote(buffer.strip()) if buffer.strip() else None
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


def _closed(text: str) -> bool:
    """Whether ``text`` (trimmed) is a complete value: bare, or its quotes closed."""
    if text.startswith('"""'):
        return len(text) >= 6 and text.endswith('"""')
    if text.startswith('"'):
        return len(text) >= 2 and text.endswith('"')
    return True


def _unquote(text: str) -> str:
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


# -- FROM, ADAPTER and the entry ----------------------------------------------------


# Resolves a FROM name to (manifest model, repo id), one of them set; raises
# MlxLamaError for a name that is neither. ``registry.name_resolver`` makes one.
ResolveName = Callable[[str], tuple[str | None, str | None]]


def modelfile_entry(
    parsed: ParsedModelfile,
    *,
    modelfile_dir: Path,
    manifest: Manifest,
    manifest_dir: Path,
    resolve: ResolveName,
) -> ModelEntry:
    """The manifest entry a Modelfile stands for.

    FROM is, in this order: an existing folder (relative to ``modelfile_dir``,
    ``~`` expanded); ``org/name@revision`` (a repo at a branch, tag or commit,
    mlx-lama's own form, which ``render_modelfile`` writes for a pinned revision);
    a model or alias of ``manifest``, whose source (repo, path,
    url, revision, backend) and settings (system, template, adapter, license,
    messages, parameters) the entry starts from, the Modelfile's instructions
    overriding them (parameters key by key); a Hugging Face repo id; a user or
    built-in alias (``resolve`` looks those up). Reads the disk; raises
    :class:`ModelfileError` naming the FROM and ADAPTER lines at fault.
    """
    problems: list[Problem] = []
    base = _base_entry(parsed, modelfile_dir, manifest, manifest_dir, resolve, problems)
    adapter = base.adapter
    if parsed.adapter is not None:
        stored, found = _stored_path(parsed.adapter, modelfile_dir, manifest_dir)
        if not found.exists():
            problems.append(
                Problem(
                    parsed.source,
                    parsed.adapter_line,
                    1,
                    "ADAPTER",
                    f"no adapter at {found}",
                    "ADAPTER takes a LoRA adapter folder, relative to the Modelfile",
                )
            )
        adapter = stored
    if problems:
        raise ModelfileError(parsed.source, problems)
    parameters = {**base.parameters.as_dict(), **parsed.parameters.as_dict()}
    return replace(
        base,
        system=parsed.system if parsed.system is not None else base.system,
        template=parsed.template if parsed.template is not None else base.template,
        adapter=adapter,
        license=list(parsed.license) if parsed.license else base.license,
        messages=list(parsed.messages) if parsed.messages else base.messages,
        parameters=Parameters.from_data(parameters),
    )


def _base_entry(
    parsed: ParsedModelfile,
    modelfile_dir: Path,
    manifest: Manifest,
    manifest_dir: Path,
    resolve: ResolveName,
    problems: list[Problem],
) -> ModelEntry:
    """What FROM names, as an entry holding only its source and settings."""
    value = parsed.base
    stored, found = _stored_path(value, modelfile_dir, manifest_dir)
    if found.is_dir():
        return ModelEntry(path=stored)

    def problem(message: str, hint: str = _FROM_HINT) -> ModelEntry:
        problems.append(Problem(parsed.source, parsed.base_line, 1, "FROM", message, hint))
        return ModelEntry()

    if found.exists():
        return problem(
            f"{found} is a file", "mlx-lama serves folders of MLX weights (safetensors), not GGUF"
        )
    repo, at, revision = value.partition("@")
    if at and revision and is_repo_id(repo):  # mlx-lama's own form: a repo at a revision
        return ModelEntry(repo=repo, revision=revision)
    try:
        model, resolved_repo = resolve(value)
    except MlxLamaError as error:
        if check_model_name(value) is not None:
            return problem(f"no folder at {found}, and {value!r} is not a model name")
        return problem(f"FROM {value}: {error.message}")
    if model is None:
        return ModelEntry(repo=resolved_repo)
    source = manifest.models[model]
    return ModelEntry(
        repo=source.repo,
        path=source.path,
        url=source.url,
        revision=source.revision,
        backend=source.backend,
        system=source.system,
        template=source.template,
        adapter=source.adapter,
        license=list(source.license),
        messages=list(source.messages),
        parameters=source.parameters,
    )


def _stored_path(text: str, modelfile_dir: Path, manifest_dir: Path) -> tuple[str, Path]:
    """A path as the manifest should store it, and where it points (see the module doc)."""
    expanded = Path(text).expanduser()
    found = Path(os.path.normpath(expanded if expanded.is_absolute() else modelfile_dir / expanded))
    if text.startswith("~"):
        return text, found
    home = Path(os.path.normpath(manifest_dir.absolute()))
    if found.is_relative_to(home):
        relative = found.relative_to(home).as_posix()
        return ("./" + relative if relative != "." else "."), found
    return str(found), found


def model_fields(entry: ModelEntry) -> dict[str, object]:
    """The entry's Modelfile keys that are set, in :data:`MODELFILE_KEYS` order, as
    plain values the editor writes (messages as tables, parameters as a table). Pure."""
    values: dict[str, object] = {
        "repo": entry.repo,
        "path": entry.path,
        "url": entry.url,
        "revision": entry.revision,
        "backend": entry.backend,
        "system": entry.system,
        "template": entry.template,
        "adapter": entry.adapter,
        "license": list(entry.license) or None,
        "messages": [{"role": m.role, "content": m.content} for m in entry.messages] or None,
        "parameters": entry.parameters.as_dict() or None,
    }
    return {key: values[key] for key in MODELFILE_KEYS if values[key] is not None}


# -- writing -------------------------------------------------------------------------


def render_modelfile(name: str, entry: ModelEntry, *, system: str | None = None) -> str:
    """The Modelfile for ``name``. ``system``, when given, replaces the entry's own
    (the caller resolves ``[defaults]``). Raises :class:`ModelfileRenderError` for a
    text no Modelfile can express (three double quotes in a row, a carriage return)."""
    source = entry.repo or entry.path or entry.url or ""
    if entry.repo and entry.revision:
        source += f"@{entry.revision}"
    lines = [
        '# Modelfile generated by "mlx-lama show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {name}",
        "",
        f"FROM {_bare(source, 'FROM')}",
    ]
    if entry.template is not None:
        lines.append(f"TEMPLATE {_quote(entry.template, 'TEMPLATE')}")
    prompt = system if system is not None else entry.system
    if prompt is not None:
        lines.append(f"SYSTEM {_quote(prompt, 'SYSTEM')}")
    if entry.adapter:
        lines.append(f"ADAPTER {_bare(entry.adapter, 'ADAPTER')}")
    lines.extend(f"LICENSE {_quote(text, 'LICENSE')}" for text in entry.license)
    for key, value in entry.parameters.as_dict().items():
        values = value if isinstance(value, list) else [value]
        lines.extend(f"PARAMETER {key} {_parameter_value(key, item)}" for item in values)
    lines.extend(f"MESSAGE {m.role} {_quote(m.content, 'MESSAGE')}" for m in entry.messages)
    return "\n".join(lines) + "\n"


def parameter_lines(entry: ModelEntry) -> list[str]:
    """``name value`` lines as Ollama prints ``parameters`` (``stop`` once per string)."""
    lines: list[str] = []
    for key, value in entry.parameters.as_dict().items():
        values = value if isinstance(value, list) else [value]
        lines.extend(f"{key} {_value(item)}" for item in values)
    return lines


def _value(value: object) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value)


def _parameter_value(key: str, value: object) -> str:
    return _quote(value, f"PARAMETER {key}") if isinstance(value, str) else str(value)


def _bare(text: str, what: str) -> str:
    """``text`` bare when the parser reads it back unchanged that way, else quoted."""
    one_line = "\n" not in text and "\r" not in text
    if text and text == text.strip() and not text.startswith('"') and one_line:
        return text
    return _quote(text, what)


def _quote(text: str, what: str) -> str:
    """``text`` in "..." when it is one line, else in \"\"\"...\"\"\" (or the other
    form, when only that one reads back unchanged)."""
    if "\r" not in text:
        for quotes in ('"""', '"') if "\n" in text else ('"', '"""'):
            candidate = f"{quotes}{text}{quotes}"
            if _reads_back(candidate, text):
                return candidate
    problem = "a carriage return" if "\r" in text else "three double quotes in a row"
    raise ModelfileRenderError(
        f"{what} holds {problem}, which a Modelfile cannot express",
        hint="change that text in mlxlama.toml, or write the Modelfile by hand",
    )


def _reads_back(candidate: str, text: str) -> bool:
    """Whether the parser takes all of ``candidate``, and only it, as the value ``text``."""
    parts = candidate.split("\n")
    if any(_closed("\n".join(parts[:k]).strip()) for k in range(1, len(parts))):
        return False  # it would end early, at a line end
    return _closed(candidate) and _unquote(candidate) == text
