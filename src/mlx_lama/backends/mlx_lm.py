"""Launch command for ``mlx_lm server`` (mlx-lm's OpenAI-compatible HTTP server).

Called through :func:`mlx_lama.backends.base.launch_spec`. Builds argv and env
only: starting, probing and stopping live in ``orchestrator/process.py``.
Pure: no I/O, no logging.

Engine facts (mlx-lm 0.31): ``python -m mlx_lm server`` (``-m mlx_lm.server``
is deprecated); ``/health`` answers before the model is loaded, and a model
that fails to load kills only the generation thread (the HTTP server lives on
and every request hangs); a port already taken crashes the main thread but
not the process. Hence :data:`FATAL_LOG_MARKERS`. A request whose
``model`` names anything but ``--model`` makes it load (even download) that
model, so requests leave ``model`` out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlx_lama.backends.base import (
    LaunchSpec,
    absolute,
    check_passthrough,
    merged_env,
    parameter_flags,
    python_module,
    required_model_path,
)

if TYPE_CHECKING:
    from mlx_lama.orchestrator.state import ServerSpec

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

READY_TIMEOUT = 300.0  # a multi-GB model loads in well under this on Apple silicon


def launch_spec(server: ServerSpec, port: int) -> LaunchSpec:
    """``python -m mlx_lm server --model PATH --host H --port P ...`` for ``server``.

    ``template`` goes to ``--chat-template`` as the template text itself (mlx-lm
    puts it into the tokenizer config as ``chat_template``: a Jinja string, not
    a file path). ``server.args`` come last, so they win over mapped parameters.
    """
    argv = python_module(
        "mlx_lm",
        "server",
        "--model",
        required_model_path(server),
        "--host",
        server.host,
        "--port",
        str(port),
        "--allowed-origins",
        NO_BROWSER_ORIGIN,
    )
    if server.adapter is not None:
        argv += ("--adapter-path", str(absolute(server.adapter)))
    if server.template is not None:
        argv += ("--chat-template", server.template)
    argv += parameter_flags(server.parameters, PARAMETER_FLAGS)
    argv += check_passthrough(server, MANAGED_FLAGS)
    return LaunchSpec(
        argv=argv,
        env=merged_env(server),
        host=server.host,
        port=port,
        served_model=None,
        ready_timeout=READY_TIMEOUT,
        fatal_log_markers=FATAL_LOG_MARKERS,
    )
