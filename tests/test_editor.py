"""The manifest editor: each edit changes only what it must, keeps comments, and
never leaves an invalid manifest behind."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest
import tomlkit

from mlx_lama.errors import ManifestError, MlxLamaError
from mlx_lama.schema.editor import (
    ManifestEditError,
    add_model,
    edit_manifest,
    find_alias_key,
    find_model_key,
    remove_alias,
    remove_model,
    set_alias,
    set_model_fields,
)
from mlx_lama.schema.loader import load_manifest, parse_manifest

BASE = """\
# Models for this laptop.
version = 1  # schema

[server]
port = 11434  # Ollama's port

[aliases]  # short names
"coder" = "qwen2.5-coder:7b"  # for the editor

# Coding model.
[models."qwen2.5-coder:7b"]
repo = "mlx-community/Qwen2.5-Coder-7B-Instruct-4bit"  # 4-bit
serve = "always"
port = 8081

[models."qwen2.5-coder:7b".parameters]  # sampling
temperature = 0.2

[models."llama3.2:3b"]
repo = "mlx-community/Llama-3.2-3B-Instruct-4bit"
pin = true  # keep loaded
"""


@pytest.fixture
def manifest_file(tmp_path: Path) -> Path:
    path = tmp_path / "mlxlama.toml"
    path.write_text(BASE, encoding="utf-8")
    return path


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mlxlama.toml"
    path.write_bytes(text.encode("utf-8"))
    return path


# -- lookups ---------------------------------------------------------------------


def test_find_model_key_matches_as_ollama_does() -> None:
    manifest = parse_manifest(
        'version = 1\n[models.tiny]\nrepo = "o/tiny"\n\n[models."Qwen:7B"]\nrepo = "o/qwen"\n'
        '\n[models."big:latest"]\nrepo = "o/big"\n'
    )
    assert find_model_key(manifest, "tiny") == "tiny"
    assert find_model_key(manifest, "tiny:latest") == "tiny"
    assert find_model_key(manifest, "TINY:Latest") == "tiny"
    assert find_model_key(manifest, "qwen:7b") == "Qwen:7B"
    assert find_model_key(manifest, "Big") == "big:latest"
    assert find_model_key(manifest, "qwen") is None
    assert find_model_key(manifest, "../tiny") is None


def test_find_alias_key_matches_as_ollama_does() -> None:
    manifest = parse_manifest(
        'version = 1\n[aliases]\n"Coder:latest" = "tiny"\n\n[models.tiny]\nrepo = "o/tiny"\n'
    )
    assert find_alias_key(manifest, "coder") == "Coder:latest"
    assert find_alias_key(manifest, "CODER:LATEST") == "Coder:latest"
    assert find_alias_key(manifest, "tiny") is None
    assert find_model_key(manifest, "coder") is None


# -- add_model ------------------------------------------------------------------------


def test_add_model_appends_after_the_last_model(manifest_file: Path) -> None:
    manifest = add_model(manifest_file, "tiny", {"repo": "org/tiny", "serve": "on-demand"})

    assert manifest_file.read_text(encoding="utf-8") == BASE + (
        '\n[models."tiny"]\nrepo = "org/tiny"\nserve = "on-demand"\n'
    )
    assert manifest.models["tiny"].repo == "org/tiny"
    assert manifest.serve_mode("tiny") == "on-demand"
    assert load_manifest(manifest_file) == manifest


def test_add_model_goes_before_the_comment_block_of_the_next_table(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "version = 1\n"
        "\n"
        "[models.a]\n"
        'repo = "o/a"\n'
        "\n"
        "[models.a.parameters]\n"
        "top_k = 5\n"
        "\n"
        "# Gateway settings.\n"
        "[server]\n"
        "port = 11434\n",
    )

    add_model(
        path,
        "new:1b",
        {"repo": "o/new", "parameters": {"temperature": 0.5, "stop": ["<end>"]}},
    )

    assert path.read_text(encoding="utf-8") == (
        "version = 1\n"
        "\n"
        "[models.a]\n"
        'repo = "o/a"\n'
        "\n"
        "[models.a.parameters]\n"
        "top_k = 5\n"
        "\n"
        '[models."new:1b"]\n'
        'repo = "o/new"\n'
        "\n"
        '[models."new:1b".parameters]\n'
        "temperature = 0.5\n"
        'stop = ["<end>"]\n'
        "\n"
        "# Gateway settings.\n"
        "[server]\n"
        "port = 11434\n"
    )


def test_add_model_to_a_manifest_without_models_goes_at_the_end(tmp_path: Path) -> None:
    path = _write(tmp_path, "version = 1\n\n[server]\nport = 11500  # not Ollama's\n")

    add_model(path, "org/model", {"repo": "org/model", "env": {"HF_HUB_OFFLINE": "1"}})

    assert path.read_text(encoding="utf-8") == (
        "version = 1\n"
        "\n"
        "[server]\n"
        "port = 11500  # not Ollama's\n"
        "\n"
        '[models."org/model"]\n'
        'repo = "org/model"\n'
        "\n"
        '[models."org/model".env]\n'
        'HF_HUB_OFFLINE = "1"\n'
    )


def test_add_model_creates_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "mlxlama.toml"

    manifest = add_model(path, "tiny", {"repo": "org/tiny"})

    assert path.read_text(encoding="utf-8") == 'version = 1\n\n[models.tiny]\nrepo = "org/tiny"\n'
    assert list(manifest.models) == ["tiny"]


def test_add_model_writes_messages_as_an_inline_array(tmp_path: Path) -> None:
    path = tmp_path / "mlxlama.toml"

    manifest = add_model(
        path,
        "tiny",
        {"repo": "org/tiny", "messages": [{"role": "user", "content": "Be brief."}]},
    )

    assert path.read_text(encoding="utf-8") == (
        "version = 1\n"
        "\n"
        "[models.tiny]\n"
        'repo = "org/tiny"\n'
        'messages = [{role = "user", content = "Be brief."}]\n'
    )
    assert manifest.models["tiny"].messages[0].content == "Be brief."


@pytest.mark.parametrize("name", ["QWEN2.5-CODER:7B", "llama3.2:3b", "Llama3.2:3B"])
def test_add_model_refuses_a_taken_name(manifest_file: Path, name: str) -> None:
    with pytest.raises(ManifestEditError, match="already in"):
        add_model(manifest_file, name, {"repo": "org/other"})
    assert manifest_file.read_text(encoding="utf-8") == BASE


def test_add_model_refuses_the_name_of_an_alias(manifest_file: Path) -> None:
    with pytest.raises(ManifestEditError, match="already an alias") as caught:
        add_model(manifest_file, "Coder:latest", {"repo": "org/other"})
    assert caught.value.hint is not None
    assert manifest_file.read_text(encoding="utf-8") == BASE


@pytest.mark.parametrize(
    ("name", "reason"),
    [("../x", "'..' is not allowed"), ("a b", "whitespace"), ("/abs", "not a path"), ("", "empty")],
)
def test_add_model_refuses_a_bad_name(manifest_file: Path, name: str, reason: str) -> None:
    with pytest.raises(ManifestEditError, match=reason):
        add_model(manifest_file, name, {"repo": "org/x"})
    assert manifest_file.read_text(encoding="utf-8") == BASE


def test_add_model_that_makes_the_manifest_invalid_leaves_the_file(manifest_file: Path) -> None:
    with pytest.raises(ManifestError, match="already used by") as caught:
        add_model(manifest_file, "tiny", {"repo": "org/tiny", "port": 8081})

    assert caught.value.problems[0].key_path == "models.tiny.port"
    assert manifest_file.read_text(encoding="utf-8") == BASE


@pytest.mark.parametrize("text", ['[models.a]\nrepo = "o/a"\n', "", "# cut short\n"])
def test_add_model_to_a_file_without_its_version_leaves_the_file(tmp_path: Path, text: str) -> None:
    """The editor never adds `version = 1` on its own: a file that does not say it (or
    an editor's save caught halfway) is not a manifest to build on."""
    path = _write(tmp_path, text)

    with pytest.raises(ManifestError) as caught:
        add_model(path, "b", {"repo": "o/b"})

    (problem,) = caught.value.problems
    assert str(problem) == (
        f"{path}:1:1: the manifest does not say which version it is "
        "(add `version = 1` as its first line)"
    )
    assert path.read_text(encoding="utf-8") == text


def test_add_model_refuses_models_written_inline(tmp_path: Path) -> None:
    text = 'version = 1\nmodels = { a = { repo = "o/a" } }\n'
    path = _write(tmp_path, text)

    with pytest.raises(ManifestEditError, match="inline table"):
        add_model(path, "b", {"repo": "o/b"})
    assert path.read_text(encoding="utf-8") == text


def test_concurrent_adds_both_land(tmp_path: Path) -> None:
    path = tmp_path / "mlxlama.toml"
    path.write_text("version = 1\n", encoding="utf-8")
    names = [f"model-{i}" for i in range(6)]
    start = threading.Barrier(len(names))
    errors: list[BaseException] = []

    def add(name: str) -> None:
        try:
            start.wait()
            add_model(path, name, {"repo": f"org/{name}"})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sorted(load_manifest(path).models) == names


# -- set_model_fields -------------------------------------------------------------------


def test_set_model_fields_changes_adds_and_deletes_keys(manifest_file: Path) -> None:
    manifest = set_model_fields(
        manifest_file, "Llama3.2:3B", {"serve": "never", "pin": None, "keep_alive": "10m"}
    )

    assert manifest_file.read_text(encoding="utf-8") == BASE.replace(
        "pin = true  # keep loaded\n", 'serve = "never"\nkeep_alive = "10m"\n'
    )
    assert manifest.serve_mode("llama3.2:3b") == "never"
    assert manifest.models["llama3.2:3b"].pin is False


def test_set_model_fields_keeps_comments_of_changed_keys(manifest_file: Path) -> None:
    set_model_fields(
        manifest_file,
        "QWEN2.5-coder:7b",
        {"repo": "mlx-community/Qwen2.5-Coder-7B-Instruct-8bit", "revision": "main"},
    )

    assert manifest_file.read_text(encoding="utf-8") == BASE.replace(
        'Instruct-4bit"  # 4-bit\nserve = "always"\nport = 8081\n',
        'Instruct-8bit"  # 4-bit\nserve = "always"\nport = 8081\nrevision = "main"\n',
    )


def test_set_model_fields_inserts_before_the_next_tables_comments(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        'version = 1\n[models.a]\nrepo = "o/a"\n\n# About b.\n[models.b]\nrepo = "o/b"\n',
    )

    set_model_fields(path, "a", {"serve": "always"})

    assert path.read_text(encoding="utf-8") == (
        'version = 1\n[models.a]\nrepo = "o/a"\nserve = "always"\n\n# About b.\n[models.b]\n'
        'repo = "o/b"\n'
    )


def test_set_model_fields_replaces_a_sub_table_in_place(manifest_file: Path) -> None:
    manifest = set_model_fields(
        manifest_file, "qwen2.5-coder:7b", {"parameters": {"temperature": 0.4, "num_ctx": 4096}}
    )

    assert manifest_file.read_text(encoding="utf-8") == BASE.replace(
        "temperature = 0.2\n", "temperature = 0.4\nnum_ctx = 4096\n"
    )
    assert manifest.models["qwen2.5-coder:7b"].parameters.num_ctx == 4096


def test_set_model_fields_writes_a_new_mapping_inline(manifest_file: Path) -> None:
    set_model_fields(manifest_file, "llama3.2:3b", {"env": {"HF_HUB_OFFLINE": "1"}})

    assert manifest_file.read_text(encoding="utf-8") == BASE.replace(
        "pin = true  # keep loaded\n",
        'pin = true  # keep loaded\nenv = {HF_HUB_OFFLINE = "1"}\n',
    )


def test_set_model_fields_on_an_unknown_model_names_the_fix(manifest_file: Path) -> None:
    with pytest.raises(ManifestEditError) as caught:
        set_model_fields(manifest_file, "mistral:7b", {"serve": "always"})

    assert "no model 'mistral:7b'" in str(caught.value)
    assert "mlx-lama pull mistral:7b" in str(caught.value)
    assert "mlx-lama list" in str(caught.value)
    assert manifest_file.read_text(encoding="utf-8") == BASE


def test_set_model_fields_on_an_alias_says_so(manifest_file: Path) -> None:
    with pytest.raises(ManifestEditError, match=r"is an alias of 'qwen2\.5-coder:7b'"):
        set_model_fields(manifest_file, "coder", {"serve": "always"})
    assert manifest_file.read_text(encoding="utf-8") == BASE


def test_set_model_fields_port_clash_leaves_the_file(manifest_file: Path) -> None:
    with pytest.raises(ManifestError) as caught:
        set_model_fields(manifest_file, "llama3.2:3b", {"port": 11434})

    assert "gateway's port" in str(caught.value)
    assert caught.value.problems[0].line == 22
    assert manifest_file.read_text(encoding="utf-8") == BASE


# -- remove_model -------------------------------------------------------------------------


def test_remove_model_drops_its_tables_comment_and_aliases(manifest_file: Path) -> None:
    manifest, aliases = remove_model(manifest_file, "Qwen2.5-Coder:7B")

    assert aliases == ("coder",)
    # The [aliases] table has a comment, so it stays, empty.
    assert manifest_file.read_text(encoding="utf-8") == (
        "# Models for this laptop.\n"
        "version = 1  # schema\n"
        "\n"
        "[server]\n"
        "port = 11434  # Ollama's port\n"
        "\n"
        "[aliases]  # short names\n"
        "\n"
        '[models."llama3.2:3b"]\n'
        'repo = "mlx-community/Llama-3.2-3B-Instruct-4bit"\n'
        "pin = true  # keep loaded\n"
    )
    assert list(manifest.models) == ["llama3.2:3b"]
    assert manifest.aliases == {}


def test_remove_model_at_the_end_keeps_the_file_ending(manifest_file: Path) -> None:
    manifest, aliases = remove_model(manifest_file, "LLAMA3.2:3B")

    assert aliases == ()
    assert (
        manifest_file.read_text(encoding="utf-8") == BASE[: BASE.index('\n[models."llama3.2:3b"]')]
    )
    assert list(manifest.models) == ["qwen2.5-coder:7b"]


def test_remove_model_removes_alias_chains_and_an_empty_aliases_table(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "version = 1\n"
        "\n"
        "[aliases]\n"
        'first = "tiny"\n'
        'second = "first"\n'
        'third = "Second:latest"\n'
        "\n"
        "[models.tiny]\n"
        'repo = "o/tiny"\n'
        "\n"
        "[models.other]\n"
        'repo = "o/other"\n',
    )

    manifest, aliases = remove_model(path, "tiny")

    assert aliases == ("first", "second", "third")
    assert path.read_text(encoding="utf-8") == 'version = 1\n\n[models.other]\nrepo = "o/other"\n'
    assert manifest.aliases == {}


def test_remove_model_keeps_aliases_of_other_models(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "version = 1\n"
        "\n"
        "[aliases]\n"
        'a = "tiny"\n'
        'b = "other"  # stays\n'
        'c = "a"\n'
        "\n"
        "[models.tiny]\n"
        'repo = "o/tiny"\n'
        "\n"
        "[models.other]\n"
        'repo = "o/other"\n',
    )

    manifest, aliases = remove_model(path, "tiny")

    assert aliases == ("a", "c")
    assert path.read_text(encoding="utf-8") == (
        'version = 1\n\n[aliases]\nb = "other"  # stays\n\n[models.other]\nrepo = "o/other"\n'
    )
    assert manifest.aliases == {"b": "other"}


def test_remove_model_keeps_the_comment_of_the_next_table(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "version = 1\n"
        "\n"
        "[models.a]\n"
        'repo = "o/a"\n'
        "\n"
        "[models.b]\n"
        'repo = "o/b"\n'
        "\n"
        "# Gateway.\n"
        "[server]\n"
        "port = 11434\n"
        "\n"
        "[models.a.parameters]\n"
        "top_k = 1\n",
    )

    remove_model(path, "a")

    assert path.read_text(encoding="utf-8") == (
        'version = 1\n\n[models.b]\nrepo = "o/b"\n\n# Gateway.\n[server]\nport = 11434\n'
    )


def test_remove_model_unknown_or_alias(manifest_file: Path) -> None:
    with pytest.raises(ManifestEditError, match="no model 'gone'"):
        remove_model(manifest_file, "gone")
    with pytest.raises(ManifestEditError, match="is an alias"):
        remove_model(manifest_file, "coder")
    with pytest.raises(ManifestEditError, match="not allowed"):
        remove_model(manifest_file, "a\\b")
    assert manifest_file.read_text(encoding="utf-8") == BASE


# -- aliases ----------------------------------------------------------------------------


def test_set_alias_adds_after_the_last_alias(manifest_file: Path) -> None:
    manifest = set_alias(manifest_file, "chat", "LLAMA3.2:3b")

    assert manifest_file.read_text(encoding="utf-8") == BASE.replace(
        "# for the editor\n", '# for the editor\n"chat" = "llama3.2:3b"\n'
    )
    assert manifest.aliases["chat"] == "llama3.2:3b"


def test_set_alias_overwrites_in_place(manifest_file: Path) -> None:
    set_alias(manifest_file, "Coder", "llama3.2:3b")

    assert manifest_file.read_text(encoding="utf-8") == BASE.replace(
        '"coder" = "qwen2.5-coder:7b"', '"coder" = "llama3.2:3b"'
    )


def test_set_alias_may_point_at_an_alias(manifest_file: Path) -> None:
    manifest = set_alias(manifest_file, "code", "CODER")

    assert manifest.aliases["code"] == "coder"


def test_set_alias_creates_the_table_before_the_first_model(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        'version = 1\n\n[server]\nport = 11434\n\n# The models.\n[models.tiny]\nrepo = "o/tiny"\n',
    )

    set_alias(path, "small:v1", "tiny:latest")

    assert path.read_text(encoding="utf-8") == (
        "version = 1\n"
        "\n"
        "[server]\n"
        "port = 11434\n"
        "\n"
        "[aliases]\n"
        '"small:v1" = "tiny"\n'
        "\n"
        "# The models.\n"
        "[models.tiny]\n"
        'repo = "o/tiny"\n'
    )


@pytest.mark.parametrize(
    ("alias", "target", "message"),
    [
        ("Llama3.2:3B", "coder", "already the name of model 'llama3.2:3b'"),
        ("chat", "mistral", "alias target 'mistral' is not a model or alias"),
        ("coder", "coder", "alias loop"),
        ("bad name", "coder", "whitespace"),
        ("chat", "../x", "not allowed"),
    ],
)
def test_set_alias_refuses(manifest_file: Path, alias: str, target: str, message: str) -> None:
    with pytest.raises(ManifestEditError, match=message):
        set_alias(manifest_file, alias, target)
    assert manifest_file.read_text(encoding="utf-8") == BASE


def test_remove_alias(manifest_file: Path) -> None:
    set_alias(manifest_file, "chat", "llama3.2:3b")

    manifest = remove_alias(manifest_file, "CODER")

    assert manifest_file.read_text(encoding="utf-8") == BASE.replace(
        '"coder" = "qwen2.5-coder:7b"  # for the editor\n', '"chat" = "llama3.2:3b"\n'
    )
    assert manifest.aliases == {"chat": "llama3.2:3b"}


def test_remove_alias_unknown(manifest_file: Path) -> None:
    with pytest.raises(ManifestEditError, match="no alias 'chat'"):
        remove_alias(manifest_file, "chat")
    with pytest.raises(ManifestEditError, match="is a model"):
        remove_alias(manifest_file, "llama3.2:3b")
    assert manifest_file.read_text(encoding="utf-8") == BASE


# -- edit_manifest ------------------------------------------------------------------------


def test_edit_manifest_applies_a_tomlkit_change(manifest_file: Path) -> None:
    def change(doc: tomlkit.TOMLDocument) -> None:
        server = doc["server"]
        assert isinstance(server, tomlkit.items.Table)
        server["port"] = 11500

    manifest = edit_manifest(manifest_file, change)

    assert manifest.server.port == 11500
    assert manifest_file.read_text(encoding="utf-8") == BASE.replace(
        "port = 11434  # Ollama's port", "port = 11500  # Ollama's port"
    )


def test_edit_manifest_without_a_change_does_not_write(manifest_file: Path) -> None:
    before = manifest_file.stat()

    manifest = edit_manifest(manifest_file, lambda doc: None)

    after = manifest_file.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(manifest.models) == ["llama3.2:3b", "qwen2.5-coder:7b"]


def test_edit_manifest_on_a_missing_file_without_a_change_creates_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mlxlama.toml"

    manifest = edit_manifest(path, lambda doc: None)

    assert not path.exists()
    assert manifest.models == {}


def test_edit_manifest_refuses_a_file_that_is_not_toml(tmp_path: Path) -> None:
    text = 'version = 1\n[models.a\nrepo = "o/a"\n'
    path = _write(tmp_path, text)

    with pytest.raises(ManifestError) as caught:
        add_model(path, "b", {"repo": "o/b"})

    assert caught.value.problems[0].line == 2
    assert "TOML syntax" in caught.value.problems[0].message
    assert path.read_text(encoding="utf-8") == text


def test_edit_manifest_invalid_result_leaves_the_file(manifest_file: Path) -> None:
    def change(doc: tomlkit.TOMLDocument) -> None:
        doc["bogus"] = 1

    with pytest.raises(ManifestError, match="unknown key 'bogus'"):
        edit_manifest(manifest_file, change)
    assert manifest_file.read_text(encoding="utf-8") == BASE


def test_edit_keeps_crlf_bom_missing_final_newline_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "mlxlama.toml"
    path.write_bytes(b'\xef\xbb\xbfversion = 1\r\n\r\n[models.a]\r\nrepo = "o/a"')
    path.chmod(0o640)

    add_model(path, "b", {"repo": "o/b"})

    assert path.read_bytes() == (
        b'\xef\xbb\xbfversion = 1\r\n\r\n[models.a]\r\nrepo = "o/a"\r\n'
        b'\r\n[models.b]\r\nrepo = "o/b"'
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_headers_inside_multiline_strings_are_not_tables(tmp_path: Path) -> None:
    text = (
        'version = 1\n[models.a]\nrepo = "o/a"\nsystem = """\n\n# not a comment\n[models.fake]\n'
        '"""\n'
    )
    path = _write(tmp_path, text)

    add_model(path, "b", {"repo": "o/b"})
    assert path.read_text(encoding="utf-8") == text + '\n[models.b]\nrepo = "o/b"\n'

    manifest, _ = remove_model(path, "b")
    assert path.read_text(encoding="utf-8") == text
    assert manifest.models["a"].system == "\n# not a comment\n[models.fake]\n"


def test_manifest_edit_error_is_an_mlx_lama_error() -> None:
    assert issubclass(ManifestEditError, MlxLamaError)
