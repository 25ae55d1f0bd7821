"""Alias layers and name resolution (mlx_lama.registry)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mlx_lama.errors import ConfigError, MlxLamaError
from mlx_lama.names import canonical_name, check_model_name, is_repo_id
from mlx_lama.registry import (
    BUILTIN_ALIASES,
    Alias,
    AliasError,
    InvalidModelNameError,
    Registry,
    Resolution,
    UnknownModelError,
    load_registry,
    read_user_aliases,
)


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("MLX_LAMA_HOME", str(home))
    return home


def _user(name: str, repo: str, description: str = "") -> Alias:
    return Alias(name=name, target=repo, source="user", description=description)


def _builtin(name: str, repo: str) -> Alias:
    return Alias(name=name, target=repo, source="builtin")


# --- the built-in table ------------------------------------------------------------------


def test_builtin_table_is_large_enough() -> None:
    assert len(BUILTIN_ALIASES) >= 24


@pytest.mark.parametrize("alias", BUILTIN_ALIASES, ids=lambda a: a.name)
def test_builtin_entry_is_well_formed(alias: Alias) -> None:
    assert check_model_name(alias.name) is None
    assert alias.name == alias.name.lower()
    assert ":" in alias.name, "built-in names carry an explicit tag"
    assert is_repo_id(alias.target)
    assert alias.target.startswith("mlx-community/")
    if alias.kind == "generate":
        assert "4bit" in alias.target and alias.quantization == "4bit"
    else:  # embedding models come as their MLX conversion has them
        assert alias.quantization == "unquantized" or str(alias.quantization) in alias.target
    assert alias.source == "builtin"
    assert alias.description.strip()
    assert "\n" not in alias.description


def test_builtin_names_are_unique_after_canonicalisation() -> None:
    keys = [canonical_name(a.name) for a in BUILTIN_ALIASES]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize(
    "family",
    [
        "llama3.1",
        "llama3.2",
        "llama3.3",
        "qwen2.5",
        "qwen3",
        "qwen2.5-coder",
        "qwen3-coder",
        "gemma2",
        "gemma3",
        "mistral",
        "mistral-nemo",
        "phi3.5",
        "phi4",
        "deepseek-r1",
    ],
)
def test_builtin_table_covers_family(family: str) -> None:
    assert any(a.name.split(":")[0] == family for a in BUILTIN_ALIASES)


@pytest.mark.parametrize(
    ("name", "repo"),
    [
        ("llama3.2:3b", "mlx-community/Llama-3.2-3B-Instruct-4bit"),
        ("qwen2.5-coder:7b", "mlx-community/Qwen2.5-Coder-7B-Instruct-4bit"),
        ("qwen3:8b", "mlx-community/Qwen3-8B-4bit"),
        ("gemma3:12b", "mlx-community/gemma-3-12b-it-4bit"),
        ("deepseek-r1:8b", "mlx-community/DeepSeek-R1-Distill-Llama-8B-4bit"),
        ("deepseek-r1:7b", "mlx-community/DeepSeek-R1-Distill-Qwen-7B-4bit"),
        ("phi4:14b", "mlx-community/phi-4-4bit"),
        ("mistral:7b", "mlx-community/Mistral-7B-Instruct-v0.3-4bit"),
        ("qwen3-coder:30b", "mlx-community/Qwen3-Coder-30B-A3B-Instruct-4bit"),
        # the earlier mlx-lama's short names
        ("qwen-coder:7b", "mlx-community/Qwen2.5-Coder-7B-Instruct-4bit"),
        ("llama:8b", "mlx-community/Meta-Llama-3.1-8B-Instruct-4bit"),
    ],
)
def test_builtin_known_names(name: str, repo: str) -> None:
    resolution = Registry().resolve(name)
    assert resolution == Resolution(
        name=name,
        source="builtin",
        repo=repo,
        via=(name,),
        alias=resolution.alias,
    )


def test_builtin_same_as_descriptions_point_at_the_same_repo() -> None:
    by_name = {a.name: a for a in BUILTIN_ALIASES}
    compat = [a for a in BUILTIN_ALIASES if a.description.startswith("Same as ")]
    assert compat, "the earlier mlx-lama's short names are in the table"
    for alias in compat:
        original = by_name[alias.description.removeprefix("Same as ")]
        assert alias.target == original.target


def test_importing_registry_does_not_import_yaml() -> None:
    code = "import sys, mlx_lama.registry; print('yaml' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


# --- resolution --------------------------------------------------------------------------

_MANIFEST_MODELS = ("chat", "Coder:8b", "tools:7b", "qwen3:8b")
_MANIFEST_ALIASES = {
    "fast": "chat",
    "quick": "fast",
    "llama3.2:3b": "chat",  # shadows a built-in
    "helper:latest": "tools:7b",
}
_USER = (
    _user("gemma2:9b", "me/my-gemma-4bit", "my own gemma"),  # overrides a built-in
    _user("mine", "me/mine-4bit"),
    _user("both:7b", "me/both-7b"),
    _user("both:8b", "me/both-8b"),
    _user("eight:8b", "me/eight-8b"),
)


@pytest.fixture
def registry() -> Registry:
    return Registry(
        user=_USER, manifest_aliases=_MANIFEST_ALIASES, manifest_models=_MANIFEST_MODELS
    )


@pytest.mark.parametrize(
    ("name", "source", "target", "via"),
    [
        # exact, case-insensitive, :latest implied
        (
            "llama3.1:8b",
            "builtin",
            "mlx-community/Meta-Llama-3.1-8B-Instruct-4bit",
            ("llama3.1:8b",),
        ),
        (
            "LLAMA3.1:8B",
            "builtin",
            "mlx-community/Meta-Llama-3.1-8B-Instruct-4bit",
            ("llama3.1:8b",),
        ),
        ("mine", "user", "me/mine-4bit", ("mine",)),
        ("mine:latest", "user", "me/mine-4bit", ("mine",)),
        ("MINE:Latest", "user", "me/mine-4bit", ("mine",)),
        # tag fallbacks: :latest, then :7b, then :8b
        ("gemma3", "builtin", "mlx-community/gemma-3-4b-it-4bit", ("gemma3:latest",)),
        ("both", "user", "me/both-7b", ("both:7b",)),
        ("eight", "user", "me/eight-8b", ("eight:8b",)),
        (
            "qwen2.5-coder",
            "builtin",
            "mlx-community/Qwen2.5-Coder-7B-Instruct-4bit",
            ("qwen2.5-coder:7b",),
        ),
        # user overrides built-in
        ("gemma2:9b", "user", "me/my-gemma-4bit", ("gemma2:9b",)),
        # manifest models, and manifest aliases followed to a model
        ("chat", "manifest", "chat", ()),
        ("CHAT:latest", "manifest", "chat", ()),
        ("coder:8b", "manifest", "Coder:8b", ()),
        ("coder", "manifest", "Coder:8b", ()),
        ("fast", "manifest", "chat", ("fast",)),
        ("quick", "manifest", "chat", ("quick", "fast")),
        ("helper", "manifest", "tools:7b", ("helper:latest",)),
        # a manifest alias or model shadows a built-in of the same name
        ("llama3.2:3b", "manifest", "chat", ("llama3.2:3b",)),
        ("qwen3:8b", "manifest", "qwen3:8b", ()),
        # a repo id that matched nothing passes through, spelled as given
        ("mlx-community/Some-Model-4bit", "repo", "mlx-community/Some-Model-4bit", ()),
    ],
)
def test_resolve(
    registry: Registry, name: str, source: str, target: str, via: tuple[str, ...]
) -> None:
    resolution = registry.resolve(name)
    assert (resolution.source, resolution.target, resolution.via) == (source, target, via)
    assert resolution.name == name
    if source == "manifest":
        assert resolution.model == target and resolution.repo is None
    else:
        assert resolution.repo == target and resolution.model is None


def test_fallback_prefers_manifest_over_alias_for_the_same_tag() -> None:
    registry = Registry(user=[_user("thing:7b", "me/user-thing")], manifest_models=["thing:7b"])
    assert registry.resolve("thing").model == "thing:7b"


def test_fallback_tries_each_tag_through_every_layer_in_order() -> None:
    # :7b (built-in layer) wins over :8b (manifest): tags first, layers second.
    registry = Registry(
        builtin=[_builtin("thing:7b", "me/builtin-7b")], manifest_models=["thing:8b"]
    )
    resolution = registry.resolve("thing")
    assert (resolution.source, resolution.repo) == ("builtin", "me/builtin-7b")


def test_tagged_name_gets_no_fallback() -> None:
    registry = Registry(builtin=[_builtin("thing:7b", "me/builtin-7b")])
    with pytest.raises(UnknownModelError):
        registry.resolve("thing:latest")


def test_registered_repo_id_alias_wins_over_passthrough() -> None:
    registry = Registry(user=[_user("me/short", "mlx-community/Qwen3-4B-4bit")])
    resolution = registry.resolve("me/short")
    assert (resolution.source, resolution.repo) == ("user", "mlx-community/Qwen3-4B-4bit")


def test_resolution_carries_user_alias_metadata() -> None:
    alias = Alias(
        name="big",
        target="me/big-4bit",
        source="user",
        description="a big one",
        default_backend="vllm-mlx",
        quantization="4bit",
    )
    resolution = Registry(user=[alias]).resolve("big")
    assert resolution.alias == alias


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("llama3.2:70b", ["llama3.2:1b", "llama3.2:3b"]),
        ("lama3.2:3b", ["llama3.2:3b"]),
        ("phi", ["phi3.5:3.8b", "phi4:14b"]),
        ("qwen3:9b", ["qwen3:8b"]),
    ],
)
def test_unknown_name_suggests_close_names(name: str, expected: list[str]) -> None:
    with pytest.raises(UnknownModelError) as info:
        Registry().resolve(name)
    error = info.value
    assert isinstance(error, MlxLamaError)
    assert error.name == name
    for suggestion in expected:
        assert suggestion in error.suggestions
        assert repr(suggestion) in str(error)
    assert "mlx-lama aliases" in str(error)
    assert "[models] in mlxlama.toml" in str(error)


def test_unknown_name_suggests_manifest_names() -> None:
    registry = Registry(manifest_models=["my-chat"], manifest_aliases={"speedy": "my-chat"})
    with pytest.raises(UnknownModelError) as info:
        registry.resolve("my-caht")
    assert "my-chat" in info.value.suggestions


def test_unknown_name_with_nothing_close_has_no_suggestions() -> None:
    with pytest.raises(UnknownModelError) as info:
        Registry().resolve("zzzzzzzz")
    assert info.value.suggestions == ()
    assert "did you mean" not in str(info.value)


@pytest.mark.parametrize("name", ["", "../etc", "a b", "llama:", "/abs/path", "a/b/c/d"])
def test_invalid_name_is_refused_with_the_rule(name: str) -> None:
    with pytest.raises(InvalidModelNameError) as info:
        Registry().resolve(name)
    problem = check_model_name(name)
    assert problem is not None
    assert problem in str(info.value)
    assert isinstance(info.value, MlxLamaError)


def test_manifest_alias_loop_raises_instead_of_recursing() -> None:
    registry = Registry(manifest_aliases={"a": "b", "b": "c", "c": "A"}, manifest_models=["m"])
    with pytest.raises(AliasError, match="loop: a -> b -> c -> a"):
        registry.resolve("a")


def test_manifest_alias_to_nothing_raises() -> None:
    registry = Registry(manifest_aliases={"a": "missing"}, manifest_models=["m"])
    with pytest.raises(AliasError, match="'missing', which is not a model in the manifest"):
        registry.resolve("a")


def test_two_spellings_of_one_name_in_a_layer_are_refused() -> None:
    with pytest.raises(AliasError, match="same name"):
        Registry(manifest_aliases={"Fast": "m", "fast:latest": "m"}, manifest_models=["m"])


def test_resolution_needs_exactly_one_target() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Resolution(name="x", source="repo")
    with pytest.raises(ValueError, match="exactly one"):
        Resolution(name="x", source="repo", model="m", repo="o/r")


# --- entries -----------------------------------------------------------------------------


def test_entries_hide_shadowed_names_and_sort_naturally() -> None:
    registry = Registry(
        builtin=[
            _builtin("m:14b", "o/b14"),
            _builtin("m:7b", "o/b7"),
            _builtin("m:1.5b", "o/b15"),
            _builtin("x:1b", "o/x"),
            _builtin("shared:1b", "o/shared"),
        ],
        user=[_user("X:1B", "o/user-x")],
        manifest_aliases={"x:1b": "model"},
        manifest_models=["model", "shared:1b"],
    )
    entries = registry.entries()
    assert [(e.name, e.source) for e in entries] == [
        ("m:1.5b", "builtin"),
        ("m:7b", "builtin"),
        ("m:14b", "builtin"),
        ("x:1b", "manifest"),
    ]
    assert all(e.shadowed_by is None for e in entries)


def test_entries_with_shadowed_marks_the_hidden_ones() -> None:
    registry = Registry(
        builtin=[_builtin("x:1b", "o/x"), _builtin("shared:1b", "o/shared")],
        user=[_user("X:1B", "o/user-x")],
        manifest_aliases={"x:1b": "model"},
        manifest_models=["model", "shared:1b"],
    )
    assert [(e.name, e.source, e.shadowed_by) for e in registry.entries(True)] == [
        ("shared:1b", "builtin", "manifest"),
        ("x:1b", "manifest", None),
        ("X:1B", "user", "manifest"),
        ("x:1b", "builtin", "manifest"),
    ]


def test_entries_user_over_builtin() -> None:
    registry = Registry(builtin=[_builtin("a:1b", "o/builtin")], user=[_user("a:1b", "o/user")])
    assert [(e.target, e.shadowed_by) for e in registry.entries(include_shadowed=True)] == [
        ("o/user", None),
        ("o/builtin", "user"),
    ]


def test_default_registry_lists_every_builtin() -> None:
    assert len(Registry().entries()) == len(BUILTIN_ALIASES)


# --- the user file -----------------------------------------------------------------------


def _write_registry(home: Path, text: str) -> Path:
    path = home / "registry.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_missing_user_file_is_an_empty_layer(home: Path) -> None:
    assert not (home / "registry.yaml").exists()
    assert read_user_aliases() == ()
    assert len(load_registry().entries()) == len(BUILTIN_ALIASES)


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "models:\n", "models: {}\n"])
def test_empty_user_file_is_an_empty_layer(home: Path, text: str) -> None:
    _write_registry(home, text)
    assert read_user_aliases() == ()


def test_good_user_file(home: Path) -> None:
    _write_registry(
        home,
        "models:\n"
        "  mine:7b:\n"
        "    repo: me/mine-7b-4bit\n"
        "    description: My fine-tune\n"
        "  gemma2:9b:\n"
        "    repo: me/gemma-override\n",
    )
    assert read_user_aliases() == (
        Alias(name="mine:7b", target="me/mine-7b-4bit", source="user", description="My fine-tune"),
        Alias(name="gemma2:9b", target="me/gemma-override", source="user"),
    )
    registry = load_registry(manifest_aliases={"dev": "chat"}, manifest_models=["chat"])
    assert registry.resolve("mine").repo == "me/mine-7b-4bit"
    assert registry.resolve("gemma2:9b").source == "user"
    assert registry.resolve("dev").model == "chat"


def test_seed_format_user_file(home: Path) -> None:
    # What the earlier mlx-lama wrote: every key present, None for unset ones.
    _write_registry(
        home,
        "models:\n"
        "  my-coder:14b:\n"
        "    default_backend: mlx-lm\n"
        "    description: null\n"
        "    quantization: 4bit\n"
        "    repo: mlx-community/Qwen2.5-Coder-14B-Instruct-4bit\n"
        "  big:72b:\n"
        "    default_backend: vllm\n"
        "    description: Large model\n"
        "    quantization: null\n"
        "    repo: mlx-community/Qwen2.5-72B-Instruct-4bit\n",
    )
    assert read_user_aliases() == (
        Alias(
            name="my-coder:14b",
            target="mlx-community/Qwen2.5-Coder-14B-Instruct-4bit",
            source="user",
            default_backend="mlx-lm",
            quantization="4bit",
        ),
        Alias(
            name="big:72b",
            target="mlx-community/Qwen2.5-72B-Instruct-4bit",
            source="user",
            description="Large model",
            default_backend="vllm",
        ),
    )


def test_read_user_aliases_takes_an_explicit_path(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.yaml"
    path.write_text("models:\n  x:\n    repo: o/x\n", encoding="utf-8")
    assert read_user_aliases(path) == (Alias(name="x", target="o/x", source="user"),)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("models: [\n", "not valid YAML"),
        ("models:\n  a:\n    repo: o/a\n  a:\n    repo: o/b\n", "appears twice"),
        ("- just\n- a list\n", "expected a mapping with a `models:` key"),
        ("models:\n  - a\n", "`models` must be a mapping"),
        ("aliases:\n  a:\n    repo: o/a\n", "unknown top-level key 'aliases'"),
        ("models:\n  a: o/a\n", "alias 'a': expected a mapping like `{repo: ORG/NAME}`"),
        ("models:\n  a:\n    description: no repo\n", "alias 'a': `repo` is missing"),
        (
            "models:\n  a:\n    repo: o/a\n    descripton: typo\n",
            "alias 'a': unknown key 'descripton' (did you mean 'description'?",
        ),
        ("models:\n  a:\n    repo: o/a\n    description: 12\n", "alias 'a': `description`"),
        ("models:\n  a:\n    repo: [o, a]\n", "alias 'a': `repo`"),
        ("models:\n  12:\n    repo: o/a\n", "alias 12: alias names must be text"),
        ("models:\n  bad name:\n    repo: o/a\n", "alias 'bad name': invalid model name"),
        ("models:\n  ../up:\n    repo: o/a\n", "alias '../up': invalid model name"),
        (
            "models:\n  a:\n    repo: not-a-repo\n",
            "repo 'not-a-repo' is not a Hugging Face repo id",
        ),
        ("models:\n  a:\n    repo: o/a:tag\n", "repo 'o/a:tag' is not a Hugging Face repo id"),
        ("models:\n  A:\n    repo: o/a\n  a:latest:\n    repo: o/b\n", "'a:latest' repeats 'A'"),
    ],
)
def test_broken_user_file_raises_config_error_naming_the_file(
    home: Path, text: str, expected: str
) -> None:
    path = _write_registry(home, text)
    with pytest.raises(ConfigError) as info:
        load_registry()
    message = str(info.value)
    assert str(path) in message
    assert expected in message
    assert info.value.hint is not None


def test_broken_user_file_lists_every_problem(home: Path) -> None:
    _write_registry(
        home,
        "models:\n  a:\n    repo: bad\n  b:\n    repo: o/b\n  c c:\n    repo: o/c\n",
    )
    with pytest.raises(ConfigError) as info:
        read_user_aliases()
    message = str(info.value)
    assert "2 problems" in message
    assert "alias 'a'" in message
    assert "alias 'c c'" in message
    assert "alias 'b'" not in message


def test_user_file_that_is_a_folder_is_an_error(home: Path) -> None:
    (home / "registry.yaml").mkdir()
    with pytest.raises(ConfigError, match="is not a file"):
        read_user_aliases()


def test_user_file_that_is_not_utf8_is_an_error(home: Path) -> None:
    (home / "registry.yaml").write_bytes(b"models:\n  caf\xe9:\n    repo: o/a\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_user_aliases()


def test_yaml_error_names_the_line(home: Path) -> None:
    path = _write_registry(home, "models:\n  a:\n    repo: o/a\n  b: [\n")
    with pytest.raises(ConfigError) as info:
        read_user_aliases()
    assert f"{path}:" in str(info.value)
    assert "not valid YAML" in str(info.value)
