"""Launch specs (``backends/base.py``, ``mlx_lm.py``, ``vllm_mlx.py``): argv and env per entry.

Pure tables: a ServerSpec literal in, the exact argv out. The flags were
checked against ``--help`` of mlx-lm 0.31 and vllm-mlx 0.6; test_process.py
proves them on real servers.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from mlx_lama.backends.base import (
    LaunchError,
    LaunchSpec,
    client_host,
    get_backend,
    launch_spec,
)
from mlx_lama.backends.interpreters import engine_main, engine_script
from mlx_lama.backends.kvcache import MIN_KV_CACHE
from mlx_lama.backends.mlx_embeddings import SERVER_PROGRAM
from mlx_lama.backends.mlx_lm import ENGINE_MAIN
from mlx_lama.errors import MlxLamaError
from mlx_lama.orchestrator.state import Engine, ServerSpec
from mlx_lama.units import Size
from tests.fixtures.servers import server_spec

MODEL = Path("/models/tiny")
TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
PY = sys.executable
VLLM = pytest.param("vllm-mlx", marks=pytest.mark.engine("vllm-mlx"))  # needs vllm-mlx installed


def spec(engine: Engine = "mlx-lm", **changes: object) -> ServerSpec:
    return replace(server_spec(MODEL, engine), **changes)  # type: ignore[arg-type]


MLX_BASE = (
    PY, "-c", ENGINE_MAIN, "server", "--model", "/models/tiny",
    "--host", "127.0.0.1", "--port", "8081", "--allowed-origins", "none",
    "--prompt-cache-bytes", str(MIN_KV_CACHE),  # no weights there: the least bound
)  # fmt: skip
# vllm-mlx runs from its own environment when it has one (mlx-lama install vllm-mlx)
VLLM_PY = get_backend("vllm-mlx").environment_python() or PY
VLLM_BASE = (
    VLLM_PY, "-c", engine_main("vllm_mlx.cli"), "serve", "/models/tiny",
    "--host", "127.0.0.1", "--port", "8081", "--served-model-name", "tiny:latest", "--offline",
    "--cache-memory-mb", str(MIN_KV_CACHE // 2**20),
)  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "extra"),
    [
        ({}, ()),
        ({"parameters": (("temperature", 0.2),)}, ("--temp", "0.2")),
        ({"parameters": (("top_p", 0.9),)}, ("--top-p", "0.9")),
        ({"parameters": (("top_k", 40),)}, ("--top-k", "40")),
        ({"parameters": (("min_p", 0.05),)}, ("--min-p", "0.05")),
        ({"parameters": (("num_predict", 128),)}, ("--max-tokens", "128")),
        ({"parameters": (("num_predict", -1),)}, ()),  # Ollama's "no limit": engine default
        ({"parameters": (("num_ctx", 8192), ("stop", ("</s>",)), ("seed", 1))}, ()),  # no flag
        (
            # mapped in a fixed order, whatever order the entry lists them in
            {"parameters": (("top_k", 5), ("temperature", 0.0), ("num_predict", 8))},
            ("--temp", "0.0", "--top-k", "5", "--max-tokens", "8"),
        ),
        ({"adapter": Path("/adapters/lora")}, ("--adapter-path", "/adapters/lora")),
        ({"template": TEMPLATE}, ("--chat-template", TEMPLATE)),  # the text, not a file
        ({"args": ("--decode-concurrency", "4")}, ("--decode-concurrency", "4")),
        (
            # args come last, so they override mapped parameters
            {"parameters": (("temperature", 0.2),), "args": ("--temp", "0.7")},
            ("--temp", "0.2", "--temp", "0.7"),
        ),
    ],
)  # fmt: skip
def test_mlx_lm_argv(changes: dict[str, object], extra: tuple[str, ...]) -> None:
    launch = launch_spec(spec("mlx-lm", **changes), 8081)
    assert launch.argv == MLX_BASE + extra
    assert launch.served_model is None  # mlx_lm loads whatever `model` names: leave it out
    assert launch.fatal_log_markers


GIB = 2**30


@pytest.mark.parametrize("engine", ["mlx-lm", VLLM])
def test_the_kv_cache_bound_reaches_each_engine_and_args_still_win(
    engine: Engine, tmp_path: Path
) -> None:
    """``kv_cache`` bounds the KV caches an engine keeps (mlx-lm's prompt cache,
    vllm-mlx's cache memory); a share of memory is resolved on this machine; the
    default is the model's weights, at most a tenth of memory, at least 64 MiB."""
    flag = "--prompt-cache-bytes" if engine == "mlx-lm" else "--cache-memory-mb"
    unit = 1 if engine == "mlx-lm" else 2**20

    def bound(server: ServerSpec) -> int:
        argv = launch_spec(server, 8081).argv
        return int(argv[argv.index(flag) + 1]) * unit

    assert bound(spec(engine, kv_cache=Size(bytes=GIB))) == GIB
    memory = psutil.virtual_memory().total
    share = bound(spec(engine, kv_cache=Size(percent=10.0)))
    assert abs(share - memory // 10) < unit
    weights = tmp_path / "model"
    weights.mkdir()
    (weights / "model.safetensors").write_bytes(b"\0" * (3 * 2**20))
    (weights / "config.json").write_text("{}")  # not a weight file
    assert bound(spec(engine, model_path=weights)) == max(MIN_KV_CACHE, 3 * 2**20)
    os.truncate(weights / "model.safetensors", memory // 5)  # sparse: no disk used
    assert abs(bound(spec(engine, model_path=weights)) - memory // 10) < unit
    overridden = launch_spec(spec(engine, kv_cache=Size(bytes=GIB), args=(flag, "7")), 8081).argv
    assert overridden[-2:] == (flag, "7")  # after ours: argparse takes the last


def test_mlx_lm_adapter_and_template_come_before_parameters() -> None:
    server = spec(adapter=Path("/a"), template="T", parameters=(("temperature", 1.0),))
    assert launch_spec(server, 8081).argv[len(MLX_BASE) :] == (
        "--adapter-path", "/a", "--chat-template", "T", "--temp", "1.0",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "extra"),
    [
        ({}, ()),
        ({"parameters": (("temperature", 0.2),)}, ("--default-temperature", "0.2")),
        ({"parameters": (("top_p", 0.9),)}, ("--default-top-p", "0.9")),
        ({"parameters": (("top_k", 40),)}, ("--default-top-k", "40")),
        ({"parameters": (("min_p", 0.05),)}, ("--default-min-p", "0.05")),
        ({"parameters": (("presence_penalty", 0.5),)}, ("--default-presence-penalty", "0.5")),
        ({"parameters": (("repeat_penalty", 1.1),)}, ("--default-repetition-penalty", "1.1")),
        ({"parameters": (("num_predict", 256),)}, ("--max-tokens", "256")),
        (
            {"parameters": (("num_predict", 40000),)},
            ("--max-tokens", "40000", "--max-request-tokens", "40000"),
        ),
        ({"parameters": (("num_predict", -2),)}, ()),
        ({"parameters": (("num_ctx", 8192), ("frequency_penalty", 0.1))}, ()),
        ({"args": ("--continuous-batching",)}, ("--continuous-batching",)),
    ],
)  # fmt: skip
@pytest.mark.engine("vllm-mlx")
def test_vllm_mlx_argv(changes: dict[str, object], extra: tuple[str, ...]) -> None:
    launch = launch_spec(spec("vllm-mlx", **changes), 8081)
    assert launch.argv == VLLM_BASE + extra
    assert launch.served_model == "tiny:latest"


@pytest.mark.parametrize("field", ["adapter", "template"])
def test_vllm_mlx_refuses_what_it_cannot_do(field: str) -> None:
    value = Path("/a") if field == "adapter" else "T"
    with pytest.raises(LaunchError, match="mlx-lm"):
        launch_spec(spec("vllm-mlx", **{field: value}), 8081)


@pytest.mark.engine("mlx-embeddings")
def test_the_embedding_engine_runs_its_program_file_with_its_environments_python() -> None:
    """Through the launcher every engine uses: its own environment's Python (mlx-lama
    is not installed there), running embedding_server.py as engine_script does."""
    python = get_backend("mlx-embeddings").environment_python()
    assert python is not None
    launch = launch_spec(spec("mlx-embeddings", args=("--x",)), 8081)
    assert launch.argv == (
        python, "-c", engine_script(SERVER_PROGRAM), "--model", "/models/tiny",
        "--host", "127.0.0.1", "--port", "8081", "--served-model-name", "tiny:latest", "--x",
    )  # fmt: skip
    assert launch.answers == "embedding"


@pytest.mark.parametrize("engine", ["mlx-lm", VLLM])
def test_env_is_offline_and_takes_manifest_env(engine: Engine) -> None:
    plain = launch_spec(spec(engine), 8081)
    assert dict(plain.env) == {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    custom = launch_spec(spec(engine, env=(("HF_HUB_OFFLINE", "0"), ("MLX_X", "y"))), 8081)
    assert dict(custom.env) == {"HF_HUB_OFFLINE": "0", "PYTHONUNBUFFERED": "1", "MLX_X": "y"}


@pytest.mark.parametrize("engine", ["mlx-lm", VLLM])
def test_host_and_port(engine: Engine) -> None:
    launch = launch_spec(spec(engine, host="0.0.0.0"), 9000)
    assert launch.argv[launch.argv.index("--host") :][:2] == ("--host", "0.0.0.0")
    assert launch.argv[launch.argv.index("--port") :][:2] == ("--port", "9000")
    assert (launch.host, launch.port) == ("0.0.0.0", 9000)
    assert launch.base_url == "http://127.0.0.1:9000"
    assert launch.ready_timeout > 60


@pytest.mark.parametrize(
    ("engine", "arg"),
    [
        ("mlx-lm", "--port"),
        ("mlx-lm", "--port=9"),
        ("mlx-lm", "--hos"),  # argparse would expand the prefix to --host
        ("mlx-lm", "--model"),
        pytest.param("vllm-mlx", "--served-model-name=x", marks=pytest.mark.engine("vllm-mlx")),
        pytest.param("vllm-mlx", "--host", marks=pytest.mark.engine("vllm-mlx")),
    ],
)
def test_args_may_not_override_managed_flags(engine: Engine, arg: str) -> None:
    with pytest.raises(LaunchError, match="may not set"):
        launch_spec(spec(engine, args=(arg, "x")), 8081)


def test_end_of_options_marker_is_not_a_managed_flag() -> None:
    assert launch_spec(spec(args=("--",)), 8081).argv[-1] == "--"


def test_relative_model_path_is_made_absolute() -> None:
    argv = launch_spec(spec(model_path=Path("models/tiny")), 8081).argv
    assert argv[argv.index("--model") + 1] == str(Path.cwd() / "models/tiny")


def test_no_model_folder_names_the_fix() -> None:
    with pytest.raises(LaunchError, match="run `mlx-lama apply` to pull it"):
        launch_spec(spec(model_path=None), 8081)


def test_external_servers_are_not_started() -> None:
    with pytest.raises(MlxLamaError, match="not started by mlx-lama"):
        launch_spec(spec("external"), 8081)


@pytest.mark.parametrize(
    ("host", "expected"),
    [("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "127.0.0.1"), ("", "127.0.0.1"), ("::", "::1")],
)
def test_client_host(host: str, expected: str) -> None:
    assert client_host(host) == expected


def test_ipv6_base_url() -> None:
    launch = LaunchSpec(argv=("x",), env=(), host="::1", port=5, served_model=None, ready_timeout=1)
    assert launch.base_url == "http://[::1]:5"
