"""load_manifest: valid manifests load; every mistake is reported with its place and a fix."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mlx_lama.errors import ManifestError, ManifestNotFoundError
from mlx_lama.schema import Duration, Size, load_manifest, parse_manifest
from mlx_lama.schema.locate import render_key_path
from tests.fixtures.manifests import only_problem, problems_of

ROOT = Path(__file__).resolve().parents[1]


def test_the_example_manifest_is_valid() -> None:
    manifest = load_manifest(ROOT / "mlxlama.toml.example")
    assert set(manifest.models) == {
        "qwen2.5-coder:7b",
        "llama3.2:3b",
        "qwen3:8b",
        "my-finetune",
        "lmstudio-qwen",
        "deepseek-v3",
        "bge-m3",
    }
    assert manifest.aliases == {"coder": "qwen2.5-coder:7b", "assistant": "llama3.2:3b"}
    coder = manifest.models["qwen2.5-coder:7b"]
    assert coder.keep_alive == Duration(1800.0)
    assert coder.parameters.as_dict() == {
        "temperature": 0.2,
        "num_predict": 1024,
        "num_ctx": 8192,
        "stop": ["<|im_end|>"],
    }
    assert manifest.server.memory_budget == Size(percent=75.0)
    assert manifest.backend_type(manifest.backend_of("qwen3:8b")) == "vllm-mlx"
    assert manifest.serve_mode("my-finetune") == "never"
    assert manifest.backend_of("bge-m3") == "mlx-embeddings"  # [defaults] says mlx-lm
    assert manifest.serve_mode("llama3.2:3b") == "on-demand"
    assert [m.role for m in manifest.models["llama3.2:3b"].messages] == ["user", "assistant"]
    assert manifest.is_external("lmstudio-qwen")
    assert manifest.models["lmstudio-qwen"].url == "http://127.0.0.1:1234"
    sharded = manifest.models["deepseek-v3"]
    assert sharded.is_distributed and sharded.hosts == ["mac-studio.local", "mac-mini.local"]


def test_a_manifest_of_only_its_version_has_safe_defaults() -> None:
    manifest = parse_manifest("version = 1\n")
    assert manifest.version == 1
    assert (manifest.server.host, manifest.server.port) == ("127.0.0.1", 11434)
    assert manifest.server.keep_alive.seconds == 300
    assert manifest.server.api_key is None
    assert manifest.server.flush_interval.seconds == 0.003
    assert manifest.models == {} and manifest.aliases == {}


@pytest.mark.parametrize("text", ["", "\n", "# cut off by a save\n", "\ufeff"])
def test_an_empty_manifest_is_refused(text: str) -> None:
    """An empty file (an editor's in-place save, caught halfway) is no manifest that
    wants nothing: the daemon keeps the last good one in force."""
    with pytest.raises(ManifestError) as caught:
        parse_manifest(text.removeprefix("\ufeff"))
    assert "mlxlama.toml:1:1: the file is empty" in str(caught.value)
    assert "version = 1" in str(caught.value)


UNVERSIONED = """\
# a save cut short before its first line, or a file that never said it
[models.m]
repo = "org/m"
"""


def test_a_manifest_without_its_version_is_refused() -> None:
    """Files must say ``version = 1``: one without it (say, an in-place save cut short)
    is refused, so the daemon keeps the last good manifest in force."""
    problem = only_problem(UNVERSIONED)
    assert str(problem) == (
        "m.toml:1:1: the manifest does not say which version it is "
        "(add `version = 1` as its first line)"
    )


def test_a_missing_version_is_reported_with_the_other_mistakes() -> None:
    rendered = [str(p) for p in problems_of(UNVERSIONED + "prot = 1\n")]
    assert rendered == [
        "m.toml:1:1: the manifest does not say which version it is "
        "(add `version = 1` as its first line)",
        "m.toml:4:1: models.m.prot: unknown key 'prot' (did you mean 'port'?)",
    ]


def test_a_version_inside_a_table_is_not_the_manifests_version() -> None:
    rendered = [str(p) for p in problems_of("[server]\nversion = 1\nport = 9000\n")]
    assert rendered == [
        "m.toml:1:1: the manifest does not say which version it is "
        "(add `version = 1` as its first line)",
        "m.toml:2:1: server.version: unknown key 'version' (allowed keys: host, port, "
        "keep_alive, max_loaded, memory_budget, api_key, origins, flush_interval, "
        "wedge_timeout)",
    ]


def test_a_manifest_file_without_its_version_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mlxlama.toml"
    path.write_text(UNVERSIONED, encoding="utf-8")
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert str(caught.value).splitlines() == [
        f"{path}: 1 problem:",
        f"  {path}:1:1: the manifest does not say which version it is "
        "(add `version = 1` as its first line)",
    ]
    path.write_text("version = 1\n" + UNVERSIONED, encoding="utf-8")
    assert set(load_manifest(path).models) == {"m"}


@pytest.mark.parametrize("text", ["version = 1", "version = 1\n", "# mine\nversion = 1\n"])
def test_its_version_alone_is_a_valid_manifest(text: str) -> None:
    manifest = parse_manifest(text)
    assert manifest.version == 1 and manifest.models == {}


def test_durations_sizes_and_stop_strings_are_normalised() -> None:
    manifest = parse_manifest(
        """
        version = 1
        [server]
        keep_alive = -1
        memory_budget = "24GB"
        flush_interval = "5ms"
        [models.m]
        repo = "org/m"
        keep_alive = 90
        parameters = { stop = "END" }
        """
    )
    assert math.isinf(manifest.server.keep_alive.seconds)
    assert manifest.server.memory_budget.resolve(0) == 24 * 2**30
    assert manifest.server.flush_interval == Duration(0.005)
    assert manifest.models["m"].keep_alive == Duration(90.0)
    assert manifest.models["m"].parameters.stop == ["END"]


ACCEPTANCE = """\
version = 1

[models."qwen2.5:7b"]
repo = "mlx-community/Qwen2.5-7B-Instruct-4bit"
prot = 1
port = 8081

[models."llama3.2:3b"]
repo = "mlx-community/Llama-3.2-3B-Instruct-4bit"
port = 8081

[aliases]
chat = "mistral:7b"
"""


def test_three_mistakes_are_all_reported_with_lines_and_hints() -> None:
    problems = problems_of(ACCEPTANCE)
    rendered = [str(p) for p in problems]
    assert rendered == [
        "m.toml:5:1: models.\"qwen2.5:7b\".prot: unknown key 'prot' (did you mean 'port'?)",
        'm.toml:10:1: models."llama3.2:3b".port: port 8081 is already used by '
        'models."qwen2.5:7b" (every served model needs its own port; leave port out to '
        "have one assigned)",
        "m.toml:13:1: aliases.chat: alias target 'mistral:7b' is not a model in this "
        'manifest (add [models."mistral:7b"] or point the alias at an existing model)',
    ]


@pytest.mark.parametrize(
    ("text", "line", "key", "message", "hint"),
    [
        pytest.param(
            'version = 1\n[models.m]\nrepo = "org/m"\nport = "8080"\n',
            4,
            "models.m.port",
            'must be a whole number, not "8080"',
            "remove the quotes",
            id="quoted-number",
        ),
        pytest.param(
            'version = 1\n[models.m]\nrepo = "org/m"\nport = 70000\n',
            4,
            "models.m.port",
            "must be at most 65535, not 70000",
            None,
            id="port-range",
        ),
        pytest.param(
            'version = 1\n[models.m]\nrepo = "org/m"\nserve = "on_demand"\n',
            4,
            "models.m.serve",
            "must be one of 'always', 'on-demand' or 'never'",
            "did you mean 'on-demand'?",
            id="serve-mode",
        ),
        pytest.param(
            'version = 1\n[models.m]\nrepo = "org/m"\npin = "yes"\n',
            4,
            "models.m.pin",
            'must be true or false, not "yes"',
            "remove the quotes",
            id="bool",
        ),
        pytest.param(
            'version = 1\n[models.m]\nrepo = "org/m"\nkeep_alive = "300"\n',
            4,
            "models.m.keep_alive",
            "invalid duration '300': missing unit",
            "write 300 without quotes for seconds, or add a unit",
            id="duration-without-unit",
        ),
        pytest.param(
            'version = 1\n[server]\nflush_interval = "2s"\n',
            3,
            "server.flush_interval",
            "must be from 0 to 1s",
            'for example "3ms"; 0 writes each token as it comes',
            id="flush-interval-too-long",
        ),
        pytest.param(
            "version = 1\n[server]\nflush_interval = -1\n",
            3,
            "server.flush_interval",
            "must be from 0 to 1s",
            None,
            id="flush-interval-forever",
        ),
        pytest.param(
            'version = 1\n[server]\nmemory_budget = "lots"\n',
            3,
            "server.memory_budget",
            "invalid size 'lots'",
            None,
            id="size",
        ),
        pytest.param(
            'version = 1\n[models.m]\nrepo = "org/m"\nkv_cache = "plenty"\n',
            4,
            "models.m.kv_cache",
            "invalid size 'plenty'",
            None,
            id="kv-cache-size",
        ),
        pytest.param(
            "version = 2\n",
            1,
            "version",
            "this mlx-lama reads manifest version 1, not 2",
            "write version = 1, or upgrade mlx-lama",
            id="version",
        ),
        pytest.param(
            'version = 1\n[model.m]\nrepo = "org/m"\n',
            2,
            "model",
            "unknown key 'model'",
            "did you mean 'models'?",
            id="top-level-typo",
        ),
        pytest.param(
            'version = 1\n[models.m]\nrepo = "org/m"\ntemperature = 0.1\n',
            4,
            "models.m.temperature",
            "unknown key 'temperature'",
            "sampling settings go under [models.m.parameters]",
            id="parameter-in-model-table",
        ),
        pytest.param(
            'version = 1\n[models.m]\nrepo = "org/m"\n[models.m.parameters]\nnum_gpu = 1\n',
            5,
            "models.m.parameters.num_gpu",
            "unknown key 'num_gpu'",
            "an Ollama option that MLX engines do not use; remove it",
            id="ollama-only-option",
        ),
        pytest.param(
            "version = 1\n"
            '[models.m]\nrepo = "org/m"\nmessages = [{ role = "robot", content = "x" }]\n',
            4,
            "models.m.messages[0].role",
            "must be one of 'system', 'user' or 'assistant'",
            None,
            id="message-role",
        ),
        pytest.param(
            'version = 1\n[models.m]\nrepo = "org/m"\npath = "./m"\n',
            4,
            "models.m.path",
            "set either repo or path, not both",
            "repo downloads",
            id="repo-and-path",
        ),
        pytest.param(
            "version = 1\n[models.m]\npin = true\n",
            2,
            "models.m",
            "no repo or path",
            'add repo = "org/name"',
            id="neither-repo-nor-path",
        ),
        pytest.param(
            'version = 1\n[models.m]\nrepo = "just-a-name"\n',
            3,
            "models.m.repo",
            "'just-a-name' is not a Hugging Face repo id",
            '"org/name"',
            id="repo-id",
        ),
        pytest.param(
            'version = 1\n[models."../escape"]\nrepo = "org/m"\n',
            2,
            'models."../escape"',
            "'..' is not allowed",
            "name:tag",
            id="dotdot-name",
        ),
        pytest.param(
            'version = 1\n[models."a\\\\b"]\nrepo = "org/m"\n',
            2,
            'models."a\\\\b"',
            "backslashes are not allowed",
            None,
            id="backslash-name",
        ),
        pytest.param(
            'version = 1\n[models."/abs"]\nrepo = "org/m"\n',
            2,
            'models."/abs"',
            "a name is not a path",
            None,
            id="absolute-name",
        ),
        pytest.param(
            'version = 1\n[models."a//b"]\nrepo = "org/m"\n',
            2,
            'models."a//b"',
            "empty part",
            None,
            id="empty-part",
        ),
        pytest.param(
            'version = 1\n[models.m]\nrepo = "org/m"\nport = 11434\n',
            4,
            "models.m.port",
            "port 11434 is the gateway's port",
            "pick another port",
            id="gateway-port",
        ),
        pytest.param(
            'version = 1\n[server]\nport = 9000\n[models.m]\nrepo = "org/m"\nport = 9000\n',
            6,
            "models.m.port",
            "port 9000 is the gateway's port",
            None,
            id="custom-gateway-port",
        ),
        pytest.param(
            'version = 1\n[models.m]\nrepo = "org/m"\nbackend = "mlx_lm"\n',
            4,
            "models.m.backend",
            "unknown backend 'mlx_lm'",
            "did you mean 'mlx-lm'?",
            id="backend-typo",
        ),
        pytest.param(
            'version = 1\n[models.m]\nrepo = "org/m"\nkind = "embedding"\nbackend = "mlx-lm"\n',
            5,
            "models.m.backend",
            "mlx-lm cannot serve embedding models",
            "embedding models run on mlx-embeddings",
            id="embedding-on-a-text-engine",
        ),
        pytest.param(
            'version = 1\n[models.m]\nrepo = "org/m"\nbackend = "mlx-embeddings"\n',
            4,
            "models.m.backend",
            "mlx-embeddings serves embedding models only",
            'add kind = "embedding"',
            id="text-model-on-the-embedding-engine",
        ),
        pytest.param(
            'version = 1\n[models.m]\nrepo = "org/m"\nkind = "embeddings"\n',
            4,
            "models.m.kind",
            "must be one of 'generate' or 'embedding'",
            "did you mean 'embedding'?",
            id="kind-typo",
        ),
        pytest.param(
            'version = 1\n[backends.fast]\nargs = ["--x"]\n',
            2,
            "backends.fast",
            "backend 'fast' needs a type",
            'add type = "mlx-lm"',
            id="backend-without-type",
        ),
        pytest.param(
            "version = 1\n"
            '[models.Llama]\nrepo = "org/a"\n[models."llama:latest"]\nrepo = "org/b"\n',
            4,
            'models."llama:latest"',
            "names the same model as 'Llama'",
            "case-insensitive",
            id="same-model-twice",
        ),
        pytest.param(
            "version = 1\n"
            '[aliases]\nm = "other"\n[models.m]\nrepo = "org/m"\n[models.other]\nrepo = "org/o"\n',
            3,
            "aliases.m",
            "alias 'm' has the same name as model 'm'",
            "rename the alias",
            id="alias-shadows-model",
        ),
        pytest.param(
            'version = 1\n[aliases]\nCoder = "m"\ncoder = "m"\n[models.m]\nrepo = "org/m"\n',
            4,
            "aliases.coder",
            "'coder' names the same alias as 'Coder'",
            "case-insensitive",
            id="same-alias-twice",
        ),
        pytest.param(
            'version = 1\n[aliases]\na = "b"\nb = "c"\nc = "a"\n',
            3,
            "aliases.a",
            "alias loop: a -> b -> c -> a",
            "point one of these aliases",
            id="alias-loop",
        ),
        pytest.param(
            'version = 1\n[models.m]\nbackend = "external"\n',
            2,
            "models.m",
            "an external model needs a url",
            'url = "http://127.0.0.1:1234"',
            id="external-without-url",
        ),
        pytest.param(
            "version = 1\n"
            '[models.m]\nbackend = "external"\nurl = "http://127.0.0.1:1234"\nrepo = "org/m"\n',
            5,
            "models.m.repo",
            "repo does not apply to an external model",
            "remove repo",
            id="external-with-repo",
        ),
        pytest.param(
            "version = 1\n"
            '[models.m]\nbackend = "external"\nurl = "http://127.0.0.1:1234"\npath = "./m"\n',
            5,
            "models.m.path",
            "path does not apply to an external model",
            "remove path",
            id="external-with-path",
        ),
        pytest.param(
            'version = 1\n[backends.lms]\ntype = "external"\n'
            '[models.m]\nbackend = "lms"\nurl = "http://127.0.0.1:1234"\nport = 8081\n',
            7,
            "models.m.port",
            "port does not apply to an external model",
            "the port is part of url",
            id="external-backend-with-port",
        ),
        pytest.param(
            'version = 1\n[defaults]\nbackend = "external"\n'
            '[models.m]\nurl = "http://127.0.0.1:1234"\nargs = ["--x"]\n',
            6,
            "models.m.args",
            "args does not apply to an external model",
            "does not start external servers",
            id="external-default-with-args",
        ),
        pytest.param(
            "version = 1\n"
            '[models.m]\nbackend = "external"\nurl = "http://127.0.0.1:1234"\nenv = { A = "1" }\n',
            5,
            "models.m.env",
            "env does not apply to an external model",
            "set its environment yourself",
            id="external-with-env",
        ),
        pytest.param(
            "version = 1\n"
            '[models.m]\nbackend = "external"\nurl = "http://127.0.0.1:1234"\nadapter = "./a"\n',
            5,
            "models.m.adapter",
            "adapter does not apply to an external model",
            "load the adapter in the external server",
            id="external-with-adapter",
        ),
        pytest.param(
            'version = 1\n[backends.lms]\ntype = "external"\nargs = ["--x"]\n',
            4,
            "backends.lms.args",
            "args does not apply to an external backend",
            "does not start external servers",
            id="external-backend-section-with-args",
        ),
        pytest.param(
            'version = 1\n[models.m]\nrepo = "org/m"\nurl = "http://127.0.0.1:1234"\n',
            4,
            "models.m.url",
            "url is only for external models",
            'set backend = "external"',
            id="url-on-managed-model",
        ),
        pytest.param(
            'version = 1\n[models.m]\nbackend = "external"\nurl = "ftp://127.0.0.1:1234"\n',
            4,
            "models.m.url",
            "url 'ftp://127.0.0.1:1234' must start with http:// or https://",
            'url = "http://127.0.0.1:1234"',
            id="url-scheme",
        ),
        pytest.param(
            'version = 1\n[models.m]\nbackend = "external"\nurl = "127.0.0.1:1234"\n',
            4,
            "models.m.url",
            "must start with http:// or https://",
            None,
            id="url-without-scheme",
        ),
        pytest.param(
            'version = 1\n[models.m]\nbackend = "external"\nurl = "http:///v1"\n',
            4,
            "models.m.url",
            "url 'http:///v1' has no host",
            None,
            id="url-without-host",
        ),
        pytest.param(
            'version = 1\n[models.m]\nbackend = "external"\nurl = "http://h:1234/v1?key=x"\n',
            4,
            "models.m.url",
            "has a query or fragment",
            "give the server's root",
            id="url-query",
        ),
        pytest.param(
            'version = 1\n[models.m]\nbackend = "external"\nurl = "http://me:pw@h:1234"\n',
            4,
            "models.m.url",
            "contains a user name or password",
            "not supported",
            id="url-credentials",
        ),
        pytest.param(
            'version = 1\n[models.m]\nbackend = "external"\nurl = "http://h:99999"\n',
            4,
            "models.m.url",
            "is not a valid URL",
            None,
            id="url-port-range",
        ),
        pytest.param(
            'version = 1\n[models.m]\nbackend = "external"\nurl = 1234\n',
            4,
            "models.m.url",
            "must be a string, not 1234",
            None,
            id="url-type",
        ),
        pytest.param(
            'version = 1\n[models.m]\nbackend = "external"\nurl = "http://localhost:11434"\n',
            4,
            "models.m.url",
            "is mlx-lama's own gateway ([server] port 11434)",
            "move the gateway with [server] port",
            id="url-is-the-gateway",
        ),
        pytest.param(
            'version = 1\n[server]\nhost = "0.0.0.0"\n',
            3,
            "server.host",
            "exposes the gateway beyond this machine",
            "set api_key",
            id="exposed-without-key",
        ),
    ],
)
def test_each_mistake_is_located_and_explained(
    text: str, line: int, key: str, message: str, hint: str | None
) -> None:
    problem = only_problem(text)
    assert (problem.file, problem.line, problem.key_path) == ("m.toml", line, key)
    assert message in problem.message
    if hint is None:
        return
    assert problem.hint is not None and hint in problem.hint


def test_valid_cross_references_pass() -> None:
    manifest = parse_manifest(
        """
        version = 1
        [server]
        host = "0.0.0.0"
        api_key = "secret"
        [aliases]
        a = "b"
        b = "Model:Latest"
        [backends.mlx-lm]
        args = ["--log-level", "DEBUG"]
        [backends.fast]
        type = "vllm-mlx"
        [models.model]
        repo = "org/m"
        backend = "fast"
        port = 8081
        [models.other]
        path = "./other"
        port = 8082
        """
    )
    assert manifest.backend_type("fast") == "vllm-mlx"
    assert manifest.backend_type(manifest.backend_of("other")) == "mlx-lm"
    assert manifest.backends["mlx-lm"].args == ["--log-level", "DEBUG"]


EXTERNAL_MISTAKES = """\
version = 1
[backends.lms]
type = "external"

[models.a]
backend = "lms"
repo = "org/a"

[models.b]
repo = "org/b"
url = "http://127.0.0.1:1234"
"""


def test_external_mistakes_are_golden() -> None:
    assert [str(p) for p in problems_of(EXTERNAL_MISTAKES)] == [
        "m.toml:5:9: models.a: an external model needs a url (add the address of the "
        'running server, as in url = "http://127.0.0.1:1234")',
        "m.toml:7:1: models.a.repo: repo does not apply to an external model "
        "(the server at url provides the model; remove repo)",
        "m.toml:11:1: models.b.url: url is only for external models "
        '(set backend = "external" to route to the server at url, or remove url)',
    ]


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("http://127.0.0.1:1234", "http://127.0.0.1:1234"),
        ("http://127.0.0.1:1234/", "http://127.0.0.1:1234"),
        ("http://127.0.0.1:1234/v1", "http://127.0.0.1:1234"),
        ("HTTPS://box.lan/v1/", "https://box.lan"),
        ("http://[::1]:8080/proxy/ollama/", "http://[::1]:8080/proxy/ollama"),
    ],
)
def test_external_models_store_the_server_root(written: str, stored: str) -> None:
    manifest = parse_manifest(
        f'version = 1\n[backends.lms]\ntype = "external"\n'
        f'[models.m]\nbackend = "lms"\nurl = "{written}"\nserve = "always"\n'
        f'system = "Be brief."\n[models.m.parameters]\ntemperature = 0.1\n'
    )
    assert manifest.models["m"].url == stored
    assert manifest.models["m"].repo is None and manifest.models["m"].path is None
    assert manifest.is_external("m")


def test_an_external_default_backend_needs_no_repo_and_other_models_may_override_it() -> None:
    manifest = parse_manifest(
        'version = 1\n[defaults]\nbackend = "external"\n'
        '[models.far]\nurl = "http://127.0.0.1:1234"\n'
        '[models.near]\nbackend = "mlx-lm"\nrepo = "org/near"\n'
    )
    assert manifest.is_external("far")
    assert not manifest.is_external("near")


REMOTE_MISTAKES = """\
version = 1
[models.tiny]
repo = "org/tiny"

[remotes.studio]
url = "http://10.0.0.2:11434"
models = ["Tiny", "shared", "bad name"]

[remotes."mac mini"]
url = "http://localhost:11434"
models = ["shared:latest"]

[remotes.lab]
models = []
key = "x"
"""


def test_remote_mistakes_are_golden() -> None:
    assert [str(p) for p in problems_of(REMOTE_MISTAKES)] == [
        "m.toml:7:11: remotes.studio.models[0]: 'Tiny' is also a model of this manifest "
        "([models.tiny]) (a name is served by one place: remove it here or from [models])",
        "m.toml:7:29: remotes.studio.models[2]: invalid model name 'bad name': "
        "whitespace is not allowed",
        "m.toml:9:10: remotes.\"mac mini\": 'mac mini' is not a valid remote name "
        "(use letters, digits, '_', '.' and '-', as in [remotes.studio])",
        "m.toml:10:1: remotes.\"mac mini\".url: url 'http://localhost:11434' is mlx-lama's own "
        "gateway ([server] port 11434) (point url at the other server's port, or move the "
        "gateway with [server] port)",
        "m.toml:11:11: remotes.\"mac mini\".models[0]: 'shared:latest' is already routed to "
        "remote 'studio' (list each model under one remote)",
        "m.toml:13:10: remotes.lab.url: required key is missing",
        "m.toml:15:1: remotes.lab.key: unknown key 'key' (did you mean 'api_key'?)",
    ]


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("http://10.0.0.2:11434", "http://10.0.0.2:11434"),
        ("http://10.0.0.2:11434/", "http://10.0.0.2:11434"),
        ("http://studio.local:11434/v1", "http://studio.local:11434"),
        ("https://box.lan/ollama/", "https://box.lan/ollama"),
    ],
)
def test_remotes_store_the_gateway_root(written: str, stored: str) -> None:
    manifest = parse_manifest(f'version = 1\n[remotes.studio]\nurl = "{written}"\n')
    assert manifest.remotes["studio"].url == stored
    assert manifest.remotes["studio"].models == []
    assert manifest.remotes["studio"].api_key is None


def test_remotes_may_share_a_url_and_name_models_a_manifest_aliases() -> None:
    manifest = parse_manifest(
        'version = 1\n[server]\nport = 11500\n[models.local]\nrepo = "org/local"\n'
        '[aliases]\nnick = "local"\n'
        '[remotes.studio]\nurl = "http://localhost:11434"\napi_key = "k"\nmodels = ["a", "b:7b"]\n'
        '[remotes.studio-bis]\nurl = "http://localhost:11434"\nmodels = ["c"]\n'
    )
    assert manifest.remotes["studio"].models == ["a", "b:7b"]
    assert manifest.remotes["studio"].api_key == "k"
    assert list(manifest.remotes) == ["studio", "studio-bis"]


def test_syntax_errors_have_a_position_and_hint() -> None:
    problem = only_problem('version = 1\n[models.qwen:7b]\nrepo = "org/q"\n')
    assert (problem.line, problem.key_path) == (2, "")
    assert problem.message.startswith("TOML syntax:")
    assert problem.hint == 'quote names that contain ":" or "/", as in [models."qwen2.5:7b"]'


def test_bare_word_values_suggest_quotes() -> None:
    problem = only_problem("version = 1\n[defaults]\nbackend = mlx-lm\n")
    assert problem.line == 3
    assert problem.hint is not None and "double quotes" in problem.hint


def test_duplicate_tables_are_a_syntax_error_with_a_hint() -> None:
    problem = only_problem('version = 1\n[models.a]\nrepo = "o/a"\n[models.a]\nrepo = "o/b"\n')
    assert problem.line == 4
    assert problem.hint == "each table and key may appear only once"


def test_problems_are_listed_in_file_order_in_the_message(tmp_path: Path) -> None:
    path = tmp_path / "mlxlama.toml"
    path.write_text(ACCEPTANCE)
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    lines = str(caught.value).splitlines()
    assert lines[0] == f"{path}: 3 problems:"
    assert [line.split(":")[1] for line in lines[1:]] == ["5", "10", "13"]


def test_missing_file_and_folder_and_bad_encoding(tmp_path: Path) -> None:
    with pytest.raises(ManifestNotFoundError, match="no manifest at"):
        load_manifest(tmp_path / "absent.toml")
    with pytest.raises(ManifestNotFoundError, match="is a folder"):
        load_manifest(tmp_path)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"version = 1\n\xff\xfe\n")
    with pytest.raises(ManifestError) as caught:
        load_manifest(binary)
    assert caught.value.problems[0].line == 2
    assert "UTF-8" in caught.value.problems[0].message


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbfversion = 1\n")
    assert load_manifest(path).version == 1


@pytest.mark.parametrize(
    ("path", "text"),
    [
        (("models", "qwen:7b", "port"), 'models."qwen:7b".port'),
        (("models", "m", "messages", 0, "role"), "models.m.messages[0].role"),
        (("aliases", "a b"), 'aliases."a b"'),
        (("server",), "server"),
    ],
)
def test_key_paths_render_as_toml_writes_them(path: tuple[str | int, ...], text: str) -> None:
    assert render_key_path(path) == text


def test_schema_package_exports_resolve() -> None:
    from mlx_lama import schema

    assert set(schema.__all__) == set(schema._EXPORTS)
    for name in schema.__all__:
        assert getattr(schema, name).__name__ == name
    with pytest.raises(AttributeError):
        _ = schema.nothing_here


@pytest.mark.parametrize(
    ("host", "needs_key"),
    [
        ("127.0.0.1", False),
        ("LOCALHOST", False),
        ("::1", False),
        ("[::1]", False),
        ("::ffff:127.0.0.1", False),
        ("127.evil.example", True),  # a name, not an address: it may point anywhere
        ("0.0.0.0", True),
        ("192.168.1.5", True),
    ],
)
def test_only_loopback_hosts_may_go_without_an_api_key(host: str, needs_key: bool) -> None:
    text = f'version = 1\n[server]\nhost = "{host}"\n'
    if not needs_key:
        assert parse_manifest(text).server.host == host
        return
    assert "exposes the gateway beyond this machine" in only_problem(text).message


def test_the_dataclasses_are_the_one_declaration_of_the_schema() -> None:
    """Defaults, keys and constraints come from ``manifest.py``: an empty manifest
    validates to the dataclasses' defaults, every table's validator takes exactly
    its dataclass's keys (less what the loader fills in from the user's settings),
    and a constraint written there is enforced."""
    import dataclasses

    from mlx_lama.schema import manifest as tables
    from mlx_lama.schema import validation

    assert parse_manifest("version = 1\n") == tables.Manifest()
    for table in (tables.Manifest, tables.ServerSection, tables.ModelEntry, tables.Parameters):
        model = validation.model_of(table)
        keys = [f.name for f in dataclasses.fields(table) if not f.metadata.get(tables.NOT_IN_FILE)]
        assert list(model.model_fields) == keys
    assert {f.name for f in dataclasses.fields(tables.Manifest)} - {
        *validation.model_of(tables.Manifest).model_fields
    } == {"user_backend", "user_port"}
    with pytest.raises(ManifestError, match=r"top_p.*at most 1"):
        parse_manifest("version = 1\n[defaults.parameters]\ntop_p = 2.0\n")


def test_an_embedding_model_runs_on_the_embedding_engine_whatever_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[defaults] and the user's default_backend pick a text engine; an embedding
    model, which no text engine serves, keeps to mlx-embeddings unless it names one."""
    monkeypatch.setenv("MLX_LAMA_DEFAULT_BACKEND", "mlx-lm")
    path = tmp_path / "mlxlama.toml"
    path.write_text(
        "version = 1\n"
        '[defaults]\nbackend = "vllm-mlx"\n'
        '[models.text]\nrepo = "org/t"\n'
        '[models.vectors]\nrepo = "org/v"\nkind = "embedding"\n'
        '[models.far]\nkind = "embedding"\nbackend = "external"\nurl = "http://127.0.0.1:9999"\n'
    )
    manifest = load_manifest(path)
    assert manifest.backend_of("text") == "vllm-mlx"
    assert manifest.backend_of("vectors") == "mlx-embeddings"
    assert manifest.backend_of("far") == "external"
    assert manifest.is_embedding("vectors") and not manifest.is_embedding("text")
    assert not manifest.backend_from_user("vectors")
