"""Launch command for ``mlx_lm server`` (mlx-lm's OpenAI-compatible HTTP server).

Called through :func:`mlx_lama.backends.base.launch_spec`. Builds argv and env
only: starting, probing and stopping live in ``orchestrator/process.py``.
Pure (no I/O, no logging) but for :class:`MlxLmModel`, the in-process engine
``run`` uses without a daemon, which imports mlx_lm only when it loads a model.

Engine facts (mlx-lm 0.31): ``python -m mlx_lm server`` (``-m mlx_lm.server``
is deprecated); ``/health`` answers before the model is loaded, and a model
that fails to load kills only the generation thread (the HTTP server lives on
and every request hangs); a port already taken crashes the main thread but
not the process. Hence :data:`FATAL_LOG_MARKERS`. A request whose
``model`` names anything but ``--model`` makes it load (even download) that
model, so requests leave ``model`` out.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from mlx_lama.backend_names import RDMA_BACKENDS
from mlx_lama.backends.base import (
    Backend,
    Capabilities,
    LaunchError,
    LaunchSpec,
    absolute,
    check_passthrough,
    merged_env,
    parameter_flags,
    register_backend,
    required_model_path,
)
from mlx_lama.backends.generation import (
    GenerationChunk,
    GenerationStats,
    InProcessModel,
    StopScanner,
)
from mlx_lama.backends.interpreters import TORCH_ENV, engine_main, engine_program
from mlx_lama.backends.kvcache import kv_cache_bytes
from mlx_lama.backends.spec import ParameterValue
from mlx_lama.errors import MlxLamaError

if TYPE_CHECKING:
    from mlx_lama.backends.spec import ServerSpec

# ``--allowed-origins`` is a comma-separated list matched exactly against the
# Origin header (default "*"). Browsers only ever send "null" or
# scheme://host[:port], so this value lets no browser page read a reply; the
# gateway calls the server directly and sends no Origin at all.
NO_BROWSER_ORIGIN = "none"

# Manifest parameter -> mlx_lm server flag (its per-server sampling defaults).
PARAMETER_FLAGS: tuple[tuple[str, str], ...] = (
    ("temperature", "--temp"),
    ("top_p", "--top-p"),
    ("top_k", "--top-k"),
    ("min_p", "--min-p"),
    ("num_predict", "--max-tokens"),
)

# Flags mlx-lama sets and ``args`` may not override (the run record relies on them).
MANAGED_FLAGS: tuple[str, ...] = ("--model", "--host", "--port")

# Before it is ready, any traceback is fatal yet leaves the process alive: a
# failed model load kills only the generation thread, and a failed bind (port
# taken) ends the main thread while that non-daemon thread keeps the process up.
FATAL_LOG_MARKERS: tuple[str, ...] = ("Traceback (most recent call last)",)

DEFAULT_MAX_TOKENS = 512  # in-process generation without num_predict

READY_TIMEOUT = 300.0  # a multi-GB model loads in well under this on Apple silicon

# The engine is run as ``python -c ENGINE_MAIN`` (``interpreters.engine_main``: a deeper
# listen queue, and no PyTorch unless the model's env asks for it).
ENGINE_MAIN = engine_main("mlx_lm")


class ModelLoadError(MlxLamaError):
    """mlx-lm could not load a model folder into this process."""


def distributed_argv(
    server: ServerSpec, argv: tuple[str, ...], env: tuple[tuple[str, str], ...]
) -> tuple[str, ...]:
    """``argv`` run as the ranks of ``server.distribution`` by mlx-lama's launcher.

    Every rank runs the same command (mlx-lm shards the model by rank; only
    rank 0 serves HTTP), so the model folder must have the same path on every
    host. Refuses what mlx-lm cannot do distributed, and a first host that is
    not this machine (rank 0 must answer the gateway here).
    """
    from mlx_lama.backends import distributed, hosts  # only distributed servers need them

    spec = server.distribution
    assert spec is not None
    if server.adapter is not None:
        raise LaunchError(
            f"server {server.name!r}: mlx-lm cannot load an adapter when serving across hosts",
            hint="fuse the adapter into the model (mlx_lm fuse) or serve it on one machine",
        )
    if spec.hosts and not hosts.is_this_machine(spec.hosts[0]):
        raise LaunchError(
            f"server {server.name!r}: the first host ({spec.hosts[0]}) runs rank 0, which "
            "answers the gateway, so it must be this machine",
            hint="list this machine first in hosts",
        )
    if spec.backend == "mpi" and shutil.which("mpirun") is None:
        raise LaunchError(
            f'server {server.name!r}: distributed = "mpi" needs mpirun, which is not on PATH',
            hint="install Open MPI on every host (brew install open-mpi), "
            'or use distributed = "ring"',
        )
    if spec.backend in RDMA_BACKENDS:
        try:  # the schema makes jaccl name a hostfile
            hosts.check_rdma(spec.hostfile or Path(), spec.backend)
        except hosts.LaunchProblem as problem:
            raise LaunchError(
                f"server {server.name!r}: {problem}",
                hint="`mlx.distributed_config --backend jaccl` writes a hostfile for "
                "Macs cabled with Thunderbolt 5",
            ) from None
    if spec.pipeline:
        argv += ("--pipeline",)
    return distributed.launcher_argv(spec, argv, [name for name, _ in env])


@register_backend
class MlxLmBackend(Backend):
    """``mlx_lm server``: the reference MLX engine, one request at a time."""

    name = "mlx-lm"
    python_packages = ("mlx_lm",)
    distribution = "mlx-lm"
    binary_names = ("mlx_lm.server",)
    service_ports = (8080,)
    module_command = ("mlx_lm", "server")

    def capabilities(self) -> Capabilities:
        return Capabilities(chat=True, completion=True, adapters=True, distributed=True)

    def serve(self, server: ServerSpec, port: int) -> LaunchSpec:
        """``python -m mlx_lm server --model PATH --host H --port P ...`` for ``server``
        (with a deeper listen queue, see ``ENGINE_MAIN``).

        ``template`` goes to ``--chat-template`` as the template text itself (mlx-lm
        puts it into the tokenizer config as ``chat_template``: a Jinja string, not
        a file path); ``kv_cache`` to ``--prompt-cache-bytes``, the bound on the KV
        caches it keeps for reuse. ``server.args`` come last, so they win over
        mapped parameters.
        """
        argv = self.launcher(
            server,
            "--model",
            required_model_path(server),
            "--host",
            server.host,
            "--port",
            str(port),
            "--allowed-origins",
            NO_BROWSER_ORIGIN,
            "--prompt-cache-bytes",
            str(kv_cache_bytes(server)),
        )
        if server.adapter is not None:
            argv += ("--adapter-path", str(absolute(server.adapter)))
        if server.template is not None:
            argv += ("--chat-template", server.template)
        argv += parameter_flags(server.parameters, PARAMETER_FLAGS)
        argv += check_passthrough(server, MANAGED_FLAGS)
        env = merged_env(server)
        argv = engine_program(argv)
        if server.distribution is not None:
            argv = distributed_argv(server, argv, env)  # every rank runs the same command
        return LaunchSpec(
            argv=argv,
            env=env,
            host=server.host,
            port=port,
            served_model=None,
            ready_timeout=READY_TIMEOUT,
            fatal_log_markers=FATAL_LOG_MARKERS,
        )

    def load_session(
        self, model_path: Path, adapter: Path | None = None, *, template: str | None = None
    ) -> InProcessModel:
        """Load the model once with ``mlx_lm.load``; each turn then runs
        ``stream_generate`` on it. ``template`` replaces the tokenizer's chat
        template, as ``--chat-template`` does for the server."""
        return MlxLmModel(model_path, adapter, template=template)


class MlxLmModel(InProcessModel):
    """A model loaded with ``mlx_lm.load``, generating with ``stream_generate``."""

    def __init__(
        self, model_path: Path, adapter: Path | None = None, *, template: str | None = None
    ) -> None:
        import time

        started = time.perf_counter()  # importing mlx_lm (transformers) is part of loading
        if os.environ.get(TORCH_ENV) != "1":  # as ENGINE_MAIN does in an engine
            # (None in sys.modules is documented; typeshed types the values as modules)
            cast("dict[str, object]", sys.modules).setdefault("torch", None)
        from mlx_lm import load

        config = {"chat_template": template} if template is not None else None
        try:
            self._model, self._tokenizer = load(
                str(absolute(model_path)),
                tokenizer_config=config,
                adapter_path=str(absolute(adapter)) if adapter else None,
            )[:2]
        except Exception as error:  # a folder that is not an MLX model: any error is possible
            raise ModelLoadError(
                f"mlx-lm cannot load {model_path}: {type(error).__name__}: {error}",
                hint="is it an MLX model folder (config.json, *.safetensors, tokenizer)?",
            ) from error
        self.load_seconds = time.perf_counter() - started

    def generate(
        self,
        *,
        messages: Sequence[Mapping[str, str]] | None = None,
        prompt: str | None = None,
        parameters: Mapping[str, ParameterValue] | None = None,
    ) -> Iterator[GenerationChunk]:
        """Stream text in this process with mlx_lm's ``stream_generate``.

        Sampling follows the manifest's parameter names; ``num_predict`` caps
        the tokens (default :data:`DEFAULT_MAX_TOKENS`), ``stop`` strings end the
        answer (and are not shown), ``seed`` makes sampling repeatable.
        """
        import mlx.core as mx
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_logits_processors, make_sampler

        params = dict(parameters or {})
        if messages is not None:
            text = self._tokenizer.apply_chat_template(  # type: ignore[no-untyped-call]
                list(messages), add_generation_prompt=True, tokenize=False
            )
        else:
            text = prompt or ""
        limit = params.get("num_predict")
        max_tokens = limit if isinstance(limit, int) and limit > 0 else DEFAULT_MAX_TOKENS
        seed = params.get("seed")
        if isinstance(seed, int):
            mx.random.seed(seed)
        sampler = make_sampler(
            temp=_number(params.get("temperature"), 0.0),
            top_p=_number(params.get("top_p"), 0.0),
            min_p=_number(params.get("min_p"), 0.0),
            top_k=int(_number(params.get("top_k"), 0)),
        )
        window = params.get("repeat_last_n")
        processors = make_logits_processors(
            repetition_penalty=_optional(params.get("repeat_penalty")),
            repetition_context_size=window if isinstance(window, int) and window > 0 else 20,
            presence_penalty=_optional(params.get("presence_penalty")),
            frequency_penalty=_optional(params.get("frequency_penalty")),
        )
        stops = StopScanner(_stop_strings(params.get("stop")))
        last = None
        for response in stream_generate(
            self._model, self._tokenizer, text, max_tokens=max_tokens, sampler=sampler,
            logits_processors=processors,
        ):  # fmt: skip
            last = response
            shown = stops.feed(response.text)
            if shown:
                yield GenerationChunk(text=shown)
            if stops.stopped:
                break
        rest = stops.flush()
        if rest:
            yield GenerationChunk(text=rest)
        if last is None:
            return
        yield GenerationChunk(
            text="",
            done=True,
            stats=GenerationStats(
                prompt_tokens=last.prompt_tokens,
                generated_tokens=last.generation_tokens,
                tokens_per_second=last.generation_tps,
                prompt_tokens_per_second=last.prompt_tps,
                peak_memory=int(last.peak_memory * 1e9),
                finish_reason="stop" if stops.stopped else last.finish_reason,
            ),
        )

    def close(self) -> None:
        import mlx.core as mx

        del self._model, self._tokenizer
        mx.clear_cache()


def _stop_strings(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple):
        return tuple(v for v in value if isinstance(v, str))
    return ()


def _number(value: object, default: float) -> float:
    return float(value) if isinstance(value, int | float) else default


def _optional(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None
