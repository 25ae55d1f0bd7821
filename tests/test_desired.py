"""desired(): the manifest and its lock as models to hold and servers to run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from mlx_lama.orchestrator.desired import desired
from mlx_lama.orchestrator.plan import make_plan
from mlx_lama.orchestrator.state import ExternalSpec, ObservedState, ServerSpec
from mlx_lama.schema import parse_manifest
from mlx_lama.schema.lockfile import Lock, LockedModel
from mlx_lama.units import Size

CACHE = Path("/cache/hub")
HERE = Path("/project")
COMMIT = "a" * 40

MANIFEST = parse_manifest(
    """
    version = 1
    [defaults.parameters]
    temperature = 0.5
    [backends.fast]
    type = "vllm-mlx"
    args = ["--continuous-batching"]
    env = { A = "1" }
    [models.chat]
    repo = "org/chat"
    serve = "always"
    port = 8081
    args = ["--log-level", "DEBUG"]
    env = { B = "2" }
    parameters = { num_ctx = 4096, top_k = 20, stop = ["END"] }
    [models.batch]
    repo = "org/batch"
    revision = "v1"
    backend = "fast"
    [models.local]
    path = "models/local"
    adapter = "~/lora"
    [models.disk]
    repo = "org/disk"
    serve = "never"
    """
)
LOCK = Lock(
    (
        LockedModel("chat", "org/chat", "main", COMMIT, (("config.json", 10),)),
        LockedModel("batch", "org/batch", "v0", "b" * 40, (("config.json", 10),)),
    )
)


def state() -> dict[str, ServerSpec]:
    result = desired(MANIFEST, LOCK, manifest_dir=HERE, cache_dir=CACHE)
    return {s.name: s for s in result.servers}


def test_models_are_sorted_and_the_matching_lock_wins() -> None:
    models = desired(MANIFEST, LOCK, manifest_dir=HERE, cache_dir=CACHE).models
    assert [m.name for m in models] == ["batch", "chat", "disk", "local"]
    by_name = {m.name: m for m in models}
    assert (by_name["chat"].commit, by_name["chat"].files) == (COMMIT, (("config.json", 10),))
    assert by_name["chat"].target == "model:org/chat@main"
    # The lock says v0 but the manifest now asks for v1: unresolved again.
    assert (by_name["batch"].revision, by_name["batch"].commit) == ("v1", None)
    assert by_name["local"].path == Path("/project/models/local")
    assert by_name["local"].target == "model:/project/models/local"


def test_served_models_get_a_full_launch_spec() -> None:
    servers = state()
    assert sorted(servers) == ["batch", "chat", "local"]  # disk is serve = "never"
    chat = servers["chat"]
    assert chat.model_path == CACHE / "models--org--chat" / "snapshots" / COMMIT
    assert (chat.engine, chat.serve, chat.port, chat.host) == (
        "mlx-lm",
        "always",
        8081,
        "127.0.0.1",
    )
    assert chat.args == ("--log-level", "DEBUG")
    assert chat.env == (("B", "2"),)
    assert chat.parameters == (
        ("num_ctx", 4096),
        ("stop", ("END",)),
        ("temperature", 0.5),
        ("top_k", 20),
    )
    batch = servers["batch"]
    assert (batch.engine, batch.backend, batch.model_path) == ("vllm-mlx", "fast", None)
    assert batch.args == ("--continuous-batching",)
    assert batch.env == (("A", "1"),)
    assert servers["local"].model_path == Path("/project/models/local")
    assert servers["local"].serve == "on-demand"


def test_adapter_paths_expand_the_home_folder() -> None:
    assert state()["local"].adapter == Path.home() / "lora"


def test_spec_hash_is_stable_and_ignores_sampling_parameters() -> None:
    chat = state()["chat"]
    assert chat.spec_hash == state()["chat"].spec_hash
    assert len(chat.spec_hash) == 16
    # Sampling parameters are applied per request: changing them keeps the hash.
    resampled = replace(chat, parameters=(("num_ctx", 4096), ("temperature", 1.0)))
    assert resampled.spec_hash == chat.spec_hash
    # Anything that changes the launch changes the hash.
    changed = [
        replace(chat, port=9000),
        replace(chat, args=()),
        replace(chat, commit="c" * 40),
        replace(chat, parameters=(("num_ctx", 8192),)),
        replace(chat, env=()),
        replace(chat, template="{{ x }}"),
        replace(chat, kv_cache=Size(bytes=2**30)),
    ]
    assert len({chat.spec_hash, *(spec.spec_hash for spec in changed)}) == 8


def test_each_server_has_a_bounded_kv_cache_its_own_else_the_defaults() -> None:
    manifest = parse_manifest(
        """
        version = 1
        [defaults]
        kv_cache = "2GB"
        [models.own]
        path = "a"
        kv_cache = "25%"
        [models.shared]
        path = "b"
        """
    )
    servers = {
        s.name: s for s in desired(manifest, LOCK, manifest_dir=HERE, cache_dir=CACHE).servers
    }
    assert servers["own"].kv_cache == Size(percent=25.0)
    assert servers["shared"].kv_cache == Size(bytes=2 * 2**30)
    assert state()["chat"].kv_cache is None  # the default bound, from the model's size


EXTERNAL = parse_manifest(
    """
    version = 1
    [backends.lms]
    type = "external"
    [models.far]
    backend = "external"
    url = "http://127.0.0.1:1234/v1"
    serve = "always"
    [models.lan]
    backend = "lms"
    url = "http://box.lan:11434"
    [models.chat]
    repo = "org/chat"
    serve = "always"
    """
)


def test_external_models_are_neither_pulled_nor_started() -> None:
    result = desired(EXTERNAL, Lock(()), manifest_dir=HERE, cache_dir=CACHE)
    assert result.externals == (
        ExternalSpec("far", "http://127.0.0.1:1234"),
        ExternalSpec("lan", "http://box.lan:11434"),
    )
    assert [m.name for m in result.models] == ["chat"]
    assert [s.name for s in result.servers] == ["chat"]
    plan = make_plan(result, ObservedState())
    assert [a.target for a in plan.actions] == ["model:org/chat@main", "server:chat"]
    # Converged for the managed model: the externals add nothing to do.
    only_externals = replace(result, models=(), servers=())
    assert make_plan(only_externals, ObservedState()).empty
