"""Modelfiles: parsing (every instruction, quoting, refusals with their line),
FROM and ADAPTER resolution, and render -> parse giving back the same entry."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from mlx_lama.registry import name_resolver
from mlx_lama.schema.loader import parse_manifest
from mlx_lama.schema.manifest import Manifest, Message, ModelEntry, Parameters
from mlx_lama.schema.modelfile import ModelfileError, ParsedModelfile, parse_modelfile
from mlx_lama.schema.modelfile_entry import MODELFILE_KEYS, model_fields, modelfile_entry
from mlx_lama.schema.modelfile_render import ModelfileRenderError, render_modelfile


def problems_of(text: str) -> list[str]:
    with pytest.raises(ModelfileError) as caught:
        parse_modelfile(text, "Modelfile")
    return [str(p) for p in caught.value.problems]


# -- parsing --------------------------------------------------------------------------


def test_every_instruction_is_read() -> None:
    parsed = parse_modelfile(
        "\ufeff# A Modelfile using every instruction.\n"
        "FROM mlx-community/Qwen3-4B-4bit\n"
        "\n"
        "PARAMETER temperature 0.2\n"
        "PARAMETER num_ctx 8192\n"
        'PARAMETER stop "<|im_end|>"\n'
        "PARAMETER stop END\n"
        "  # an indented comment\n"
        'SYSTEM "You are terse."\n'
        "TEMPLATE {{ .Prompt }}\n"
        "ADAPTER ./lora\n"
        "LICENSE MIT\n"
        'LICENSE """Second\nlicense"""\n'
        "MESSAGE user hi\n"
        'MESSAGE assistant "hello there"\n',
        "Modelfile",
    )
    assert parsed == ParsedModelfile(
        source="Modelfile",
        base="mlx-community/Qwen3-4B-4bit",
        base_line=2,
        system="You are terse.",
        template="{{ .Prompt }}",
        adapter="./lora",
        adapter_line=11,
        license=("MIT", "Second\nlicense"),
        messages=(Message("user", "hi"), Message("assistant", "hello there")),
        parameters=Parameters(temperature=0.2, num_ctx=8192, stop=["<|im_end|>", "END"]),
    )


def test_instruction_names_ignore_case_and_values_keep_theirs() -> None:
    parsed = parse_modelfile("from ./Model\nSystem Keep THIS Case\nParameter top_k 5\n")
    assert (parsed.base, parsed.system, parsed.parameters.top_k) == ("./Model", "Keep THIS Case", 5)


def test_bare_values_run_to_the_end_of_the_line_trimmed() -> None:
    parsed = parse_modelfile("FROM m\nSYSTEM   a # not a comment \t \n")
    assert parsed.system == "a # not a comment"


def test_multi_line_values_keep_their_text_exactly() -> None:
    text = (
        'FROM m\nSYSTEM """\n  Line one, indented.\n\n# not a comment\nsay "hi"   \n"""\n'
        'TEMPLATE "{{ .System }}\n{{ .Prompt }}"\n'
        'MESSAGE user """two\nlines"""\n'
    )
    parsed = parse_modelfile(text)
    assert parsed.system == '\n  Line one, indented.\n\n# not a comment\nsay "hi"   \n'
    assert parsed.template == "{{ .System }}\n{{ .Prompt }}"
    assert parsed.messages == (Message("user", "two\nlines"),)


def test_quoted_values_need_no_escapes() -> None:
    parsed = parse_modelfile('FROM m\nSYSTEM "He said "no"."\nPARAMETER stop ""\n')
    assert parsed.system == 'He said "no".'
    assert parsed.parameters.stop == [""]


def test_windows_line_endings_read_as_newlines() -> None:
    parsed = parse_modelfile('FROM m\r\nSYSTEM """a\r\nb"""\r\nPARAMETER seed 7\r\n')
    assert (parsed.system, parsed.parameters.seed) == ("a\nb", 7)


def test_stop_strings_accumulate_and_parameters_get_their_types() -> None:
    parsed = parse_modelfile(
        "FROM m\nPARAMETER stop a\nPARAMETER stop b\nPARAMETER stop c\n"
        "PARAMETER top_k 40\nPARAMETER top_p 1\nPARAMETER seed -1\nPARAMETER repeat_last_n -1\n"
    )
    params = parsed.parameters
    assert params.stop == ["a", "b", "c"]
    assert (params.top_k, params.seed, params.repeat_last_n) == (40, -1, -1)
    assert params.top_p == 1.0 and isinstance(params.top_p, float)
    assert isinstance(params.top_k, int)


# -- refusals ---------------------------------------------------------------------------


def test_every_problem_is_reported_at_once_with_its_line() -> None:
    found = problems_of(
        "FROM a\n"  # 1
        "FROM b\n"  # 2
        "PARAMETER temperature warm\n"  # 3
        "PARAMETER top_p 2\n"  # 4
        "PARAMETER top_k 1.5\n"  # 5
        "PARAMETER temprature 1\n"  # 6
        "PARAMETER mirostat 1\n"  # 7
        "PARAMETER num_gpu 1\n"  # 8
        "MESSAGE bot hi\n"  # 9
        "SYSTEM\n"  # 10
        "QUANTIZE q4\n"  # 11
    )
    assert found == [
        "Modelfile:2:1: FROM: FROM is given twice (first on line 1) (keep one of them)",
        "Modelfile:3:1: PARAMETER temperature: 'warm' is not a number",
        "Modelfile:4:1: PARAMETER top_p: input should be less than or equal to 1 (got 2)",
        "Modelfile:5:1: PARAMETER top_k: '1.5' is not a whole number",
        "Modelfile:6:1: PARAMETER temprature: unknown parameter 'temprature' (did you mean "
        "'temperature'? known: temperature, top_p, top_k, min_p, num_predict, num_ctx, stop, "
        "seed, repeat_penalty, repeat_last_n, presence_penalty, frequency_penalty)",
        "Modelfile:7:1: PARAMETER mirostat: mlx-lama has no such setting as 'mirostat' "
        "(remove the line)",
        "Modelfile:8:1: PARAMETER num_gpu: mlx-lama has no such setting as 'num_gpu' "
        "(remove the line)",
        "Modelfile:9:1: MESSAGE: MESSAGE has role 'bot' (write MESSAGE ROLE TEXT with ROLE "
        "one of system, user, assistant)",
        "Modelfile:10:1: SYSTEM: SYSTEM needs a value",
        "Modelfile:11:1: QUANTIZE: unknown instruction 'QUANTIZE' (use one of FROM, PARAMETER, "
        "TEMPLATE, SYSTEM, ADAPTER, LICENSE, MESSAGE)",
    ]


@pytest.mark.parametrize(
    "name",
    [
        "penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mlock",
        "mirostat", "mirostat_tau", "mirostat_eta", "num_batch", "num_gpu", "main_gpu",
        "use_mmap", "num_thread", "num_keep", "typical_p", "draft_num_predict",
    ],
)  # fmt: skip
def test_ollama_settings_mlx_lama_lacks_are_refused(name: str) -> None:
    assert problems_of(f"FROM m\n\nPARAMETER {name} 1\n") == [
        f"Modelfile:3:1: PARAMETER {name}: mlx-lama has no such setting as {name!r} "
        "(remove the line)"
    ]


@pytest.mark.parametrize("instruction", ["REQUIRES 0.14.0", "DRAFT ./d", "RENDERER x", "PARSER y"])
def test_ollama_instructions_mlx_lama_cannot_honour_are_refused(instruction: str) -> None:
    (found,) = problems_of(f"FROM m\n{instruction}\n")
    keyword = instruction.split(maxsplit=1)[0]
    assert found.startswith(f"Modelfile:2:1: {keyword}: mlx-lama cannot honour {keyword} (")


def test_a_missing_from_is_refused() -> None:
    assert problems_of("# nothing here\nSYSTEM hi\n") == [
        "Modelfile:1:1: FROM: no FROM line "
        "(add FROM with a model folder, a repo id or a manifest model)"
    ]


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("FROM m\nSYSTEM hi\nSYSTEM again\n", 3, "SYSTEM: SYSTEM is given twice (first on line 2)"),
        ("FROM m\nTEMPLATE a\nTEMPLATE b\n", 3, "TEMPLATE: TEMPLATE is given twice"),
        ("FROM m\nADAPTER a\n\nADAPTER b\n", 4, "ADAPTER: ADAPTER is given twice"),
        (
            "FROM m\nPARAMETER seed 1\nPARAMETER seed 2\n",
            3,
            "PARAMETER seed: PARAMETER seed is given twice",
        ),
        ("FROM m\nPARAMETER\n", 2, "PARAMETER: PARAMETER needs a name and a value"),
        ("FROM m\nPARAMETER seed\n", 2, "PARAMETER seed: PARAMETER seed needs a value"),
        ("FROM m\nMESSAGE\n", 2, "MESSAGE: MESSAGE has no role"),
        ("FROM m\nMESSAGE user\n", 2, "MESSAGE: MESSAGE user needs a text"),
        ("FROM m\nMESSAGE User hi\n", 2, "MESSAGE: MESSAGE has role 'User'"),
        ("FROM m\nPARAMETER top_p inf\n", 2, "PARAMETER top_p: 'inf' is not a finite number"),
        ("FROM m\nPARAMETER num_ctx 0\n", 2, "PARAMETER num_ctx: input should be greater"),
        ('FROM m\nSYSTEM """open\nnever closed\n', 2, "SYSTEM: this value's quotes are never"),
        ('FROM m\nSYSTEM "open\n', 2, "SYSTEM: this value's quotes are never closed"),
    ],
)
def test_each_refusal_names_its_line(text: str, line: int, what: str) -> None:
    (found,) = problems_of(text)
    assert found.startswith(f"Modelfile:{line}:1: {what}")


def test_the_error_message_lists_the_problems_under_the_file() -> None:
    with pytest.raises(ModelfileError) as caught:
        parse_modelfile("FROM m\nFOO\nBAR\n", "build/Modelfile")
    assert str(caught.value).splitlines()[:2] == [
        "build/Modelfile: 2 problems:",
        "  build/Modelfile:2:1: FOO: unknown instruction 'FOO' (use one of FROM, PARAMETER, "
        "TEMPLATE, SYSTEM, ADAPTER, LICENSE, MESSAGE)",
    ]


# -- FROM, ADAPTER and the fields ------------------------------------------------------------

MANIFEST = parse_manifest(
    """
    version = 1
    [aliases]
    "base-alias" = "base"

    [models."base"]
    repo = "org/base-model"
    revision = "v2"
    backend = "vllm-mlx"
    system = "Base system."
    template = "{{ .Prompt }}"
    license = "Apache-2.0"
    messages = [{ role = "user", content = "seed" }]
    serve = "always"
    port = 8090
    [models."base".parameters]
    temperature = 0.5
    top_k = 20
    stop = ["A"]
    """
)


def entry_of(text: str, tmp_path: Path, manifest: Manifest = MANIFEST) -> ModelEntry:
    return modelfile_entry(
        parse_modelfile(text),
        modelfile_dir=tmp_path / "build",
        manifest=manifest,
        manifest_dir=tmp_path,
        resolve=name_resolver(manifest.aliases, manifest.models),
    )


def test_from_a_folder_under_the_manifest_is_stored_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "models" / "m").mkdir(parents=True)
    (tmp_path / "build").mkdir()
    assert entry_of("FROM ../models/m\n", tmp_path) == ModelEntry(path="./models/m")
    assert entry_of(f"FROM {tmp_path / 'models' / 'm'}\n", tmp_path).path == "./models/m"


def test_from_a_folder_elsewhere_is_stored_absolute_and_home_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "elsewhere" / "m"
    outside.mkdir(parents=True)
    manifest_dir = tmp_path / "project"
    parsed = parse_modelfile("FROM ../elsewhere/m\n")
    stored = modelfile_entry(
        parsed,
        modelfile_dir=tmp_path / "project",
        manifest=Manifest(),
        manifest_dir=manifest_dir,
        resolve=name_resolver({}, ()),
    )
    assert stored.path == str(outside)
    monkeypatch.setenv("HOME", str(tmp_path / "elsewhere"))
    homed = entry_of("FROM ~/m\n", tmp_path)
    assert homed.path == "~/m"


def test_from_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "model.gguf").write_text("GGUF")
    with pytest.raises(ModelfileError) as caught:
        entry_of("# gguf\nFROM model.gguf\n", tmp_path)
    (problem,) = caught.value.problems
    assert (problem.line, problem.key_path) == (2, "FROM")
    assert problem.message.endswith("model.gguf is a file")


def test_from_a_repo_id_or_builtin_alias_gives_a_repo(tmp_path: Path) -> None:
    assert entry_of("FROM org/some-model\n", tmp_path) == ModelEntry(repo="org/some-model")
    assert entry_of("FROM org/some-model@v1.0\n", tmp_path) == ModelEntry(
        repo="org/some-model", revision="v1.0"
    )
    assert entry_of("FROM llama3.2\n", tmp_path).repo == "mlx-community/Llama-3.2-3B-Instruct-4bit"


def test_from_a_manifest_model_builds_on_it(tmp_path: Path) -> None:
    built = entry_of(
        "FROM base-alias\nSYSTEM Mine.\nPARAMETER temperature 0.9\nPARAMETER stop B\n", tmp_path
    )
    assert built == ModelEntry(
        repo="org/base-model",
        revision="v2",
        backend="vllm-mlx",
        system="Mine.",
        template="{{ .Prompt }}",
        license=["Apache-2.0"],
        messages=[Message("user", "seed")],
        parameters=Parameters(temperature=0.9, top_k=20, stop=["B"]),
    )  # serve and port are the base's own business: not copied


def test_unknown_from_and_missing_adapter_are_reported_together(tmp_path: Path) -> None:
    with pytest.raises(ModelfileError) as caught:
        entry_of("FROM nosuchmodel:1b\nADAPTER ./lora\n", tmp_path)
    from_problem, adapter_problem = caught.value.problems
    assert (from_problem.line, from_problem.key_path) == (1, "FROM")
    assert from_problem.message.startswith("FROM nosuchmodel:1b: unknown model 'nosuchmodel:1b'")
    assert (adapter_problem.line, adapter_problem.key_path) == (2, "ADAPTER")
    assert adapter_problem.message == f"no adapter at {tmp_path / 'build' / 'lora'}"


def test_a_missing_folder_is_named_as_one(tmp_path: Path) -> None:
    with pytest.raises(ModelfileError) as caught:
        entry_of("FROM ./models/gone\n", tmp_path)
    assert caught.value.problems[0].message == (
        f"no folder at {tmp_path / 'build' / 'models' / 'gone'}, "
        "and './models/gone' is not a model name"
    )


def test_an_adapter_is_stored_like_a_folder(tmp_path: Path) -> None:
    (tmp_path / "build" / "lora").mkdir(parents=True)
    assert entry_of("FROM org/m\nADAPTER lora\n", tmp_path).adapter == "./build/lora"


def test_fields_come_in_manifest_order_and_only_when_set() -> None:
    entry = ModelEntry(
        path="./m",
        system="s",
        license=["MIT"],
        messages=[Message("user", "u")],
        parameters=Parameters(top_k=3),
    )
    fields = model_fields(entry)
    assert list(fields) == ["path", "system", "license", "messages", "parameters"]
    assert fields["messages"] == [{"role": "user", "content": "u"}]
    assert fields["parameters"] == {"top_k": 3}
    assert list(model_fields(MANIFEST.models["base"])) == [
        k for k in MODELFILE_KEYS if k not in ("path", "url", "adapter")
    ]


# -- render -> parse ------------------------------------------------------------------------

ROUND_TRIPS = [
    ModelEntry(repo="org/plain"),
    ModelEntry(
        repo="org/full",
        revision="0123456789abcdef0123456789abcdef01234567",
        system="You are terse.",
        template='{{ if .System }}<|system|>\n{{ .System }}{{ end }}\n"{{ .Prompt }}"',
        license=["MIT", "Second license\n\nwith paragraphs."],
        messages=[
            Message("system", "Be brief."),
            Message("user", '"Quoted" start'),
            Message("assistant", "Two\nlines"),
        ],
        parameters=Parameters(
            temperature=0.7,
            top_p=0.9,
            top_k=40,
            min_p=0.05,
            num_predict=-1,
            num_ctx=8192,
            stop=["<|im_end|>", "\n\n", '"', " padded "],
            seed=-1,
            repeat_penalty=1.1,
            repeat_last_n=64,
            presence_penalty=-0.5,
            frequency_penalty=1.5,
        ),
    ),
    ModelEntry(
        repo="org/edges",
        system='  leading and trailing blanks  \n  ""ends with quotes""',
        template="",
        messages=[Message("user", '""'), Message("assistant", 'ends with a quote"')],
    ),
    ModelEntry(repo="org/ends", system='line one\n"""triple""" mid-line is fine\nend'),
    ModelEntry(path="/models/local folder", adapter="/adapters/my lora", system="\nstarts blank"),
]


@pytest.mark.parametrize("entry", ROUND_TRIPS)
def test_render_then_parse_gives_the_entry_back(entry: ModelEntry, tmp_path: Path) -> None:
    for folder in (entry.path, entry.adapter):
        if folder:
            Path(tmp_path / folder.lstrip("/")).mkdir(parents=True)
    text = render_modelfile("x", entry)
    if entry.path:  # a path model's Modelfile names its folder; here under tmp_path
        text = text.replace(f"FROM {entry.path}", f"FROM {tmp_path}{entry.path}")
        text = text.replace(f"ADAPTER {entry.adapter}", f"ADAPTER {tmp_path}{entry.adapter}")
    parsed = parse_modelfile(text)
    rebuilt = modelfile_entry(
        parsed,
        modelfile_dir=tmp_path,
        manifest=Manifest(),
        manifest_dir=tmp_path,
        resolve=name_resolver({}, ()),
    )
    expected = entry
    if entry.path:
        expected = replace(entry, path=f".{entry.path}", adapter=f".{entry.adapter}")
    assert rebuilt == expected


def test_render_writes_every_instruction_in_order() -> None:
    text = render_modelfile("pinned", ROUND_TRIPS[1])
    keywords = [line.split()[0] for line in text.splitlines() if line and line[0].isupper()]
    assert keywords[:4] == ["FROM", "TEMPLATE", "SYSTEM", "LICENSE"]
    assert keywords.count("LICENSE") == 2 and keywords.count("MESSAGE") == 3
    assert keywords.index("PARAMETER") < keywords.index("MESSAGE")
    assert "FROM org/full@0123456789abcdef0123456789abcdef01234567\n" in text
    assert 'PARAMETER stop """\n\n"""\n' in text


def test_text_a_modelfile_cannot_hold_is_refused_clearly() -> None:
    with pytest.raises(ModelfileRenderError, match="SYSTEM holds three double quotes"):
        render_modelfile("x", ModelEntry(repo="o/m", system='say """\nhi'))
    with pytest.raises(ModelfileRenderError, match="MESSAGE holds a carriage return"):
        render_modelfile("x", ModelEntry(repo="o/m", messages=[Message("user", "a\rb")]))
