"""``mlx-lama run``: one answer, piped stdin, the interactive chat, through the daemon,
pulling first; plus the pure pieces (prompt assembly, stats, /set parameter) and
the backend's in-process session API.

The CLI runs as a real subprocess (the chat on a pseudo-terminal), against the
tiny random-weight model; nothing is mocked. The one stand-in is a minimal HTTP
server speaking the daemon's NDJSON, for an error in the middle of a stream
that a real engine cannot be made to produce on cue.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mlx_lama.backends.base import get_backend
from mlx_lama.backends.generation import StopScanner
from mlx_lama.cli._answer import Settings, Stats, conversation, go_duration
from mlx_lama.cli._chat import parse_parameter
from mlx_lama.cli._targets import with_manifest_messages
from mlx_lama.cli.run import check_keepalive, prompt_text
from mlx_lama.errors import MlxLamaError, UsageError
from mlx_lama.orchestrator.daemonfile import daemon_file
from mlx_lama.schema.manifest import Message, ModelEntry
from tests.conftest import TINY_REPO_ID, PublishedRepo
from tests.fixtures.gateway import gateway_process
from tests.fixtures.servers import free_port

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
WORDS = re.compile(r"[a-z]{2,}")
DEADLINE = 180.0  # s; only how long a hung test waits, never a performance bound


# -- helpers ---------------------------------------------------------------------------


def write_manifest(tmp_path: Path, tiny_model: Path, body: str = "") -> Path:
    """A manifest with ``tiny`` as a ``path`` model (a private copy), short answers."""
    model = tmp_path / "tiny"
    if not model.exists():
        shutil.copytree(tiny_model, model)
    path = tmp_path / "mlxlama.toml"
    path.write_text(
        "version = 1\n\n[defaults.parameters]\nnum_predict = 6\n\n"
        f'[models.tiny]\npath = "{model}"\n{body}',
        encoding="utf-8",
    )
    return path


def run_cli(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m mlx_lama ARGS`` with stdin from ``stdin`` (or /dev/null): never a tty."""
    return subprocess.run(
        [sys.executable, "-m", "mlx_lama", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=env if env is not None else dict(os.environ),
        timeout=DEADLINE,
        check=False,
    )


class Terminal:
    """The CLI on a pseudo-terminal that is its controlling terminal (so Ctrl-C
    sends SIGINT), with stdout and stderr both on it."""

    def __init__(self, *args: str) -> None:
        master, slave = os.openpty()

        def take_terminal() -> None:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlx_lama", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=dict(os.environ, TERM="dumb"),
            preexec_fn=take_terminal,  # noqa: PLW1509 - the test's own single-threaded child
        )
        os.close(slave)
        self.master = master
        self.pending = ""  # read but not yet matched
        self.transcript = ""

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def expect(self, text: str, deadline: float = DEADLINE) -> str:
        """Everything up to and including ``text``; fails with the transcript after ``deadline``."""
        end = time.monotonic() + deadline
        while text not in self.pending:
            if time.monotonic() > end:
                raise AssertionError(f"no {text!r} on the terminal; it shows:\n{self.transcript}")
            if not self._read(0.2) and self.process.poll() is not None:
                raise AssertionError(f"exited before {text!r}; it showed:\n{self.transcript}")
        before, _, self.pending = self.pending.partition(text)
        return before + text

    def _read(self, wait: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], wait)
        if not ready:
            return False
        try:
            data = os.read(self.master, 65536).decode(errors="replace")
        except OSError:  # the child closed the terminal
            return False
        data = ANSI.sub("", data).replace("\r\n", "\n")
        self.pending += data
        self.transcript += data
        return bool(data)

    def interrupt_until(self, text: str) -> str:
        """Ctrl-C until ``text`` shows. A signal that lands between the prompt being
        drawn and readline waiting for a key is only seen at the next one."""
        for _ in range(10):
            self.send("\x03")
            with suppress(AssertionError):
                return self.expect(text, deadline=5)
        raise AssertionError(f"Ctrl-C never showed {text!r}:\n{self.transcript}")

    def close(self) -> int | None:
        if self.process.poll() is None:
            self.process.kill()
        code = self.process.wait(30)
        os.close(self.master)
        return code


@contextmanager
def terminal(*args: str) -> Iterator[Terminal]:
    term = Terminal(*args)
    try:
        yield term
    finally:
        term.close()


def words(text: str) -> list[str]:
    return WORDS.findall(text)


# -- pure pieces -----------------------------------------------------------------------


def test_prompt_text_joins_words_and_appends_piped_stdin_like_ollama() -> None:
    assert prompt_text(["why", "is", "the", "sky", "blue?"], None) == "why is the sky blue?"
    assert prompt_text([], None) is None  # a terminal and no prompt: the chat
    assert prompt_text([], "from a pipe\n") == "from a pipe\n"
    assert prompt_text(["summarise"], "the text\n") == "summarise\n\nthe text\n"
    assert prompt_text(["just this"], "") == "just this"
    assert prompt_text([], "") == ""  # empty: load the model only


def test_keepalive_takes_go_durations_only() -> None:
    assert check_keepalive("5m") == "5m"
    assert check_keepalive("-1m") == "-1m"
    assert check_keepalive(None) is None
    for bad in ("300", "5 minutes", "1d"):
        with pytest.raises(UsageError, match="invalid --keepalive"):
            check_keepalive(bad)


def test_durations_print_as_go_prints_them() -> None:
    assert go_duration(0) == "0s"
    assert go_duration(850) == "850ns"
    assert go_duration(1_500) == "1.5µs"
    assert go_duration(12_345_678) == "12.345678ms"
    assert go_duration(1_000_000_000) == "1s"
    assert go_duration(2_500_000_000) == "2.5s"
    assert go_duration(61_500_000_000) == "1m1.5s"
    assert go_duration(3_600_000_000_000) == "1h0m0s"


def test_verbose_stats_match_ollamas_block() -> None:
    stats = Stats.from_chunk(
        {
            "total_duration": 2_500_000_000,
            "load_duration": 1_000_000,
            "prompt_eval_count": 10,
            "prompt_eval_duration": 50_000_000,
            "eval_count": 20,
            "eval_duration": 162_000_000,
            "done": True,
        }
    )
    assert stats.summary() == (
        "total duration:       2.5s\n"
        "load duration:        1ms\n"
        "prompt eval count:    10 token(s)\n"
        "prompt eval duration: 50ms\n"
        "prompt eval rate:     200.00 tokens/s\n"
        "eval count:           20 token(s)\n"
        "eval duration:        162ms\n"
        "eval rate:            123.46 tokens/s\n"
    )
    assert Stats.from_chunk({"eval_count": 3}).summary() == "eval count:           3 token(s)\n"


def test_set_parameter_values_are_typed_and_checked_like_the_manifest() -> None:
    assert parse_parameter("temperature", ["0"]) == 0.0
    assert parse_parameter("num_predict", ["64"]) == 64
    assert parse_parameter("stop", ["<|end|>", "User:"]) == ["<|end|>", "User:"]
    with pytest.raises(ValueError, match="unknown parameter 'bogus'"):
        parse_parameter("bogus", ["1"])
    with pytest.raises(ValueError, match="whole number"):
        parse_parameter("top_k", ["0.5"])
    with pytest.raises(ValueError, match="top_p"):
        parse_parameter("top_p", ["1.5"])
    with pytest.raises(ValueError, match="one value"):
        parse_parameter("seed", ["1", "2"])


def test_in_process_messages_get_the_manifest_system_and_seeded_turns() -> None:
    entry = ModelEntry(
        path="/m",
        system="be brief",
        messages=[Message("user", "hi"), Message("assistant", "hello")],
    )
    turn = [{"role": "user", "content": "why?"}]
    assert with_manifest_messages(entry, turn) == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "why?"},
    ]
    own = conversation(turn, Settings(system="talk like a pirate"))
    assert with_manifest_messages(entry, own)[0] == {
        "role": "system",
        "content": "talk like a pirate",
    }


def test_stop_strings_cut_streamed_text_even_across_pieces() -> None:
    scanner = StopScanner(["</end>"])
    shown = [scanner.feed(piece) for piece in ("one two </", "en", "d> three")]
    assert "".join(shown) == "one two " and scanner.stopped
    assert shown[0] == "one two "  # "</" is held back until it is known
    plain = StopScanner(["STOP"])
    assert plain.feed("a S") == "a " and plain.feed("o") == "So" and plain.flush() == ""
    tail = StopScanner(["STOP"])
    assert tail.feed("x ST") == "x " and tail.flush() == "ST"


# -- the backend's in-process session --------------------------------------------------


def test_a_session_loads_once_and_answers_many_turns(tiny_model: Path) -> None:
    session = get_backend("mlx-lm").load_session(tiny_model)
    try:
        assert session.load_seconds > 0
        answers = []
        for _ in range(2):
            chunks = list(
                session.generate(
                    messages=[{"role": "user", "content": "hello there"}],
                    parameters={"num_predict": 5, "temperature": 0.0},
                )
            )
            assert chunks[-1].done and chunks[-1].stats is not None
            assert chunks[-1].stats.generated_tokens == 5
            answers.append("".join(c.text for c in chunks))
        assert answers[0] == answers[1] and words(answers[0])
        first = words(answers[0])[0]
        hello = [{"role": "user", "content": "hello there"}]
        stopped = list(
            session.generate(messages=hello, parameters={"num_predict": 5, "stop": (first,)})
        )
        last = stopped[-1]
        assert last.stats is not None and last.stats.finish_reason == "stop"
        assert first not in "".join(c.text for c in stopped)
    finally:
        session.close()


def test_engines_without_in_process_generation_say_so(tiny_model: Path) -> None:
    with pytest.raises(MlxLamaError, match="cannot generate in-process"):
        get_backend("vllm-mlx").load_session(tiny_model)


# -- one answer, in this process -------------------------------------------------------


def test_a_prompt_gets_one_streamed_answer_in_process(tmp_path: Path, tiny_model: Path) -> None:
    manifest = write_manifest(tmp_path, tiny_model)
    done = run_cli("run", "-f", str(manifest), "tiny", "hello", "there", "--verbose")
    assert done.returncode == 0, done.stderr
    assert words(done.stdout) and done.stdout.endswith("\n")
    assert "eval rate:" in done.stderr and "load duration:" in done.stderr
    assert "eval count:           6 token(s)" in done.stderr
    assert "Traceback" not in done.stderr


def test_piped_stdin_is_the_prompt(tmp_path: Path, tiny_model: Path) -> None:
    manifest = write_manifest(tmp_path, tiny_model)
    done = run_cli("run", "-f", str(manifest), "tiny:latest", stdin="hello\n")
    assert done.returncode == 0, done.stderr
    assert words(done.stdout)
    assert done.stderr == ""


def test_format_and_keepalive_in_process_are_warned_about(tmp_path: Path, tiny_model: Path) -> None:
    manifest = write_manifest(tmp_path, tiny_model)
    done = run_cli(
        "run", "-f", str(manifest), "tiny", "hi", "--format", "json", "--keepalive", "5m"
    )
    assert done.returncode == 0, done.stderr
    assert "--format json is not enforced in-process" in done.stderr
    assert "--keepalive has no effect in-process" in done.stderr
    bad = run_cli("run", "-f", str(manifest), "tiny", "hi", "--keepalive", "300")
    assert bad.returncode == 2 and "invalid --keepalive '300'" in bad.stderr
    assert bad.stdout == ""


# -- the chat --------------------------------------------------------------------------


def test_interactive_chat_sets_parameters_answers_and_says_bye(
    tmp_path: Path, tiny_model: Path
) -> None:
    manifest = write_manifest(tmp_path, tiny_model, 'system = "be brief"\n')
    with terminal("run", "-f", str(manifest), "tiny") as term:
        term.expect(">>> ")
        term.send("/set parameter temperature 0\n")
        assert "Set parameter 'temperature' to '0'" in term.expect(">>> ")
        term.send("/set parameter bogus 1\n")
        assert "Couldn't set parameter: unknown parameter 'bogus'" in term.expect(">>> ")
        term.send("hello there\n")
        answer = term.expect(">>> ").split("hello there", 1)[1]
        assert words(answer)
        term.send('"""first line\n')
        term.expect("... ")
        term.send('second line"""\n')
        assert words(term.expect(">>> ").split('second line"""', 1)[1])
        term.send("/show parameters\n")
        shown = term.expect(">>> ")
        assert "Model defined parameters:" in shown and "num_predict" in shown
        assert "User defined parameters:" in shown and "temperature" in shown
        term.send("/show system\n")
        assert "be brief" in term.expect(">>> ")
        term.send("/nonsense\n")
        assert "Unknown command '/nonsense'" in term.expect(">>> ")
        term.send("/bye\n")
        assert term.process.wait(60) == 0


def test_ctrl_c_stops_an_answer_and_ctrl_d_exits(tmp_path: Path, tiny_model: Path) -> None:
    manifest = write_manifest(tmp_path, tiny_model)
    with terminal("run", "-f", str(manifest), "tiny") as term:
        term.expect(">>> ")
        term.interrupt_until("Use Ctrl + d or /bye to exit.")
        term.expect(">>> ")
        term.send("/set parameter num_predict 1000000\n")  # an answer that never ends by itself
        term.expect(">>> ")
        term.send("tell me everything\n")
        term.expect("everything\n")
        term.expect(" ")  # words are coming: the answer has begun
        term.send("\x03")
        term.expect(">>> ")
        term.send("/set parameter num_predict 3\n")
        term.expect(">>> ")
        term.send("/clear\n")
        assert "Cleared session context" in term.expect(">>> ")
        term.send("again\n")
        assert words(term.expect(">>> ").split("again", 1)[1])
        term.send("\x04")
        assert term.process.wait(60) == 0


# -- through the daemon ----------------------------------------------------------------


@pytest.mark.server
def test_run_goes_through_the_daemon_and_leaves_the_model_warm(
    tmp_path: Path, tiny_model: Path
) -> None:
    manifest = write_manifest(tmp_path, tiny_model, 'serve = "never"\n')
    with gateway_process(manifest, log_path=tmp_path / "serve.log") as gateway:
        done = run_cli("run", "-f", str(manifest), "tiny", "hello", "--verbose")
        assert done.returncode == 0, done.stderr
        assert words(done.stdout)
        assert 'serve = "never"' in done.stderr and '"on-demand"' in done.stderr
        assert 'serve = "on-demand"' in manifest.read_text()
        assert "eval rate:" in done.stderr and "total duration:" in done.stderr
        models: Any = gateway.health()["models"]
        assert models["tiny"]["state"] == "ready"  # still loaded for the next command
        pid = gateway.pid_of("tiny")
        again = run_cli("run", "-f", str(manifest), "tiny", "hello", "--keepalive", "10m")
        assert again.returncode == 0 and words(again.stdout)
        assert again.stderr == ""  # no note: it is on-demand now
        assert gateway.pid_of("tiny") == pid  # the same warm server answered


class _NdjsonDaemon(BaseHTTPRequestHandler):
    """Answers /api/chat with one piece of text, then an error line (status 200)."""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()
        lines = [
            {"model": "tiny", "message": {"role": "assistant", "content": "partial"}},
            {"error": "the model server exited"},
        ]
        self.wfile.write(b"".join(json.dumps(line).encode() + b"\n" for line in lines))

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_an_error_in_the_middle_of_the_stream_is_reported(tmp_path: Path, tiny_model: Path) -> None:
    manifest = write_manifest(tmp_path, tiny_model)
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _NdjsonDaemon)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with daemon_file(url, manifest):  # this process stands in for the daemon
            done = run_cli("run", "-f", str(manifest), "tiny", "hello")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert done.returncode == 1
    assert done.stdout == "partial\n"
    assert done.stderr == "error: the model server exited\n"


# -- models that are not there ---------------------------------------------------------


def test_unknown_models_fail_with_a_hint(tmp_path: Path, tiny_model: Path) -> None:
    manifest = write_manifest(tmp_path, tiny_model)
    unknown = run_cli("run", "-f", str(manifest), "nosuchmodel", "hi")
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert unknown.stderr.startswith("error: unknown model 'nosuchmodel'")
    assert "[models]" in unknown.stderr and "Traceback" not in unknown.stderr
    offline = run_cli("run", "-f", str(manifest), "some-org/not-here", "hi")
    assert offline.returncode == 1 and offline.stdout == ""
    assert "some-org/not-here" in offline.stderr and "HF_HUB_OFFLINE" in offline.stderr
    assert "Traceback" not in offline.stderr
    assert "not-here" not in manifest.read_text()


def test_external_models_need_the_daemon(tmp_path: Path) -> None:
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(
        'version = 1\n\n[models.far]\nbackend = "external"\nurl = "http://127.0.0.1:9"\n',
        encoding="utf-8",
    )
    done = run_cli("run", "-f", str(manifest), "far", "hi")
    assert done.returncode == 1
    assert "external server" in done.stderr and "mlx-lama serve" in done.stderr


def test_a_model_missing_from_the_manifest_is_pulled_first(
    tmp_path: Path, tiny_model: Path, published_model: PublishedRepo
) -> None:
    manifest = write_manifest(tmp_path, tiny_model)
    done = run_cli("run", "-f", str(manifest), TINY_REPO_ID, "hello")
    assert done.returncode == 0, done.stderr
    assert words(done.stdout)
    assert f'repo = "{TINY_REPO_ID}"' in manifest.read_text()
    again = run_cli("run", "-f", str(manifest), TINY_REPO_ID, "hello")
    assert again.returncode == 0 and again.stdout == done.stdout
    assert again.stderr == ""  # nothing left to pull
