"""``mlx-lama run MODEL PROMPT`` end to end, against ``mlx_lm generate``.

What it measures: the wall time of one command that answers one prompt, as a
user types it, from process start to exit, for the tiny random-weight test
model, the same prompt and the same number of tokens (``num_predict`` in the
manifest, ``--max-tokens`` for mlx_lm, greedy sampling in both):

- ``mlx-lama run`` with a warm daemon (``mlx-lama serve`` for the manifest, its
  model already loaded): the command streams from the daemon's ``/api/chat``;
- ``mlx-lama run`` without a daemon: the model is loaded in the process;
- ``python -m mlx_lm generate --model PATH``: the engine's own one-shot CLI,
  which loads the model every time;
- the floor: ``python -c pass``, the interpreter's own start-up.

How: everything lives in a temporary folder (the model, an isolated
MLX_LAMA_HOME and Hugging Face home, two manifests: the daemon serves one with
the model as ``serve = "always"``, the other has no daemon). Each command is
checked once (exit 0, text on stdout, and the number of tokens it generated),
then run once more to warm the OS caches and ``runs`` timed times (at most
:data:`SLOW_RUNS` for the two that load the model: each takes seconds, and
their spread is small next to the difference being measured)
(``bench.report.time_command``). The daemon's model server must keep its PID
throughout, so every daemon run was served warm.

Its table replaces the ``run`` section of docs/benchmarks.md.

What it must not do: change mlx-lama or the engine, tune anything, or leave a
process behind: the gateway is stopped (SIGTERM, then SIGKILL of its group),
the model server by the PID in its run record, and the script checks with
psutil that none survives.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.fixtures.tiny_model import make_tiny_model

from bench.gateway import isolated_env, report_problems, start_gateway, tear_down, wait_ready
from bench.report import (
    Comparison,
    Measurement,
    chart,
    comparison_table,
    machine,
    time_command,
    versions,
    write_section,
)

MODEL = "tiny"
PROMPT = "hello"
MAX_TOKENS = 32
CLI = (sys.executable, "-m", "mlx_lama")
SLOW_RUNS = 5

DAEMON = "`mlx-lama run` (warm daemon)"
IN_PROCESS = "`mlx-lama run` (no daemon: loads in-process)"
MLX_LM = "`python -m mlx_lm generate`"
FLOOR = "`python -c pass` (floor)"


def build(root: Path) -> tuple[Path, Path, Path, dict[str, str]]:
    """The daemon's manifest, the daemon-less one, the model folder, the environment."""
    env = isolated_env(root)
    model = make_tiny_model(root / "model", seed=0)
    manifests = []
    for folder, serve in (("served", "always"), ("local", "never")):
        path = root / folder / "mlxlama.toml"
        path.parent.mkdir()
        path.write_text(
            f'version = 1\n\n[models."{MODEL}"]\npath = "{model}"\nserve = "{serve}"\n\n'
            f'[models."{MODEL}".parameters]\ntemperature = 0.0\nnum_predict = {MAX_TOKENS}\n',
            encoding="utf-8",
        )
        manifests.append(path)
    return manifests[0], manifests[1], model, env


def mlx_lm_generate(model: Path) -> list[str]:
    """mlx_lm's one-shot CLI with the same prompt, token limit and (greedy) sampling."""
    return [
        sys.executable, "-m", "mlx_lm", "generate", "--model", str(model),
        "--prompt", PROMPT, "--max-tokens", str(MAX_TOKENS), "--temp", "0",
    ]  # fmt: skip


def generated_tokens(label: str, argv: Sequence[str], env: Mapping[str, str]) -> int | None:
    """Run ``argv`` once, check it answered, and return how many tokens it generated."""
    verbose = [*argv, "--verbose"] if tuple(argv[:3]) == CLI else list(argv)
    done = subprocess.run(verbose, env=dict(env), capture_output=True, text=True, check=False)
    if done.returncode != 0 or (tuple(argv[:3]) == CLI and not done.stdout.strip()):
        raise SystemExit(f"{label} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    found = re.search(r"^eval count:\s+(\d+) token", done.stderr, re.M) or re.search(
        r"Generation: (\d+) tokens", done.stdout
    )
    return int(found.group(1)) if found else None


def main(runs: int = 15) -> None:
    """``runs`` timed runs of each command (:data:`SLOW_RUNS` at most of the slow ones)."""
    root = Path(tempfile.mkdtemp(prefix="mlx-lama-bench-run-"))
    home = root / "state" / "mlx-lama-home"
    log = root / "gateway.log"
    gateway: subprocess.Popen[bytes] | None = None
    watched: list[int] = []
    started = time.monotonic()
    try:
        served, local, model, env = build(root)
        gateway, url = start_gateway(served, env, log)
        watched.append(gateway.pid)
        server_pid = wait_ready(url, gateway, log, MODEL)
        watched.append(server_pid)
        print(f"ready after {time.monotonic() - started:.1f}s", flush=True)
        commands = {
            DAEMON: [*CLI, "run", "-f", str(served), MODEL, PROMPT],
            IN_PROCESS: [*CLI, "run", "-f", str(local), MODEL, PROMPT],
            MLX_LM: mlx_lm_generate(model),
            FLOOR: [sys.executable, "-c", "pass"],
        }
        tokens = {label: generated_tokens(label, argv, env) for label, argv in commands.items()}
        results = []
        for label, argv in commands.items():
            slow = label in (IN_PROCESS, MLX_LM)
            results.append(time_command(label, argv, env, min(runs, SLOW_RUNS) if slow else runs))
            print(results[-1].line(), flush=True)
        if wait_ready(url, gateway, log, MODEL) != server_pid:
            raise SystemExit("the daemon's model server was restarted during the runs")
        report_problems(log)
        write_section("run", render(results, tokens))
        print(f"done in {time.monotonic() - started:.0f}s", flush=True)
    finally:
        tear_down(gateway, home, root, watched)


def render(results: list[Measurement], tokens: Mapping[str, int | None]) -> str:
    rows = "\n".join(
        f"| {r.label} | {_count(tokens.get(r.label))} | {r.median:.3f} s "
        f"| {min(r.seconds):.3f} s | {max(r.seconds):.3f} s |"
        for r in results
    )
    by_label = {r.label: r for r in results}
    comparisons = [
        Comparison("answer one prompt, model warm", by_label[DAEMON], by_label[MLX_LM]),
        Comparison("answer one prompt, cold start", by_label[IN_PROCESS], by_label[MLX_LM]),
        Comparison("interpreter start-up (floor)", by_label[FLOOR], by_label[MLX_LM]),
    ]
    ratio = by_label[MLX_LM].median / by_label[DAEMON].median
    return f"""## `mlx-lama run` wall time, against `mlx_lm generate`

One prompt (`{PROMPT}`), {MAX_TOKENS} tokens at most, greedy, on the tiny
random-weight test model; each command is a fresh process, timed
{by_label[DAEMON].runs} times ({by_label[MLX_LM].runs} for the two that load the model).
The peer is mlx-lm's own one-shot CLI on the same model, prompt and limit.

{comparison_table(comparisons)}
{chart("run", comparisons, title="mlx-lama run vs mlx_lm generate (s)")}

| command | tokens generated | median | min | max |
|---|---|---|---|---|
{rows}

With a warm daemon, `mlx-lama run` is {ratio:.1f}x faster than `mlx_lm generate`
(median): it loads neither mlx nor the model, it only sends the request. Without
a daemon (the cold start) it pays what `mlx_lm generate` pays (importing mlx_lm
and loading the model) plus its own manifest handling.

Machine: {machine()}; {versions("mlx-lama", "mlx-lm", "mlx")}.
Command: `uv run --all-extras python -m bench run`
"""


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)
