"""A bad request or a wedged engine costs one error, never the model.

Real ``mlx_lm.server`` processes behind the real gateway (in a thread, so the
scheduler's state can be read): ``SIGSTOP`` wedges it with its port still
open, ``SIGKILL`` kills it; the watchdog, the retry rules and the disconnect
handling must bring the model back and never send a request whose client is
gone. ``[server] wedge_timeout`` is a few seconds here.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from mlx_lama.orchestrator import process
from tests.fixtures.gateway import RunningGateway, gateway_in_thread, wait_for
from tests.fixtures.tiny_model import EOS_TOKEN, SPECIAL_TOKENS

WEDGE = 3.0  # s: [server] wedge_timeout in these tests
READY = 120.0  # s a (re)started tiny server may take here, generously
ENGINE_POSTS = '"POST /v1/'  # how mlx_lm.server logs each request it takes


def _manifest(tmp_path: Path, tiny_model: Path, *, serve: str = "always") -> Path:
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(
        f'version = 1\n\n[server]\nwedge_timeout = "{WEDGE:g}s"\n\n'
        f'[models.a]\npath = "{tiny_model}"\nserve = "{serve}"\nkeep_alive = "1h"\n',
        encoding="utf-8",
    )
    return manifest


@pytest.fixture
def gateway(tmp_path: Path, tiny_model: Path) -> Iterator[RunningGateway]:
    with gateway_in_thread(_manifest(tmp_path, tiny_model), ready_timeout=READY) as running:
        wait_for(lambda: _entry(running).get("state") == "ready", READY, "a to be ready")
        yield running


def _entry(gateway: RunningGateway) -> dict[str, object]:
    models = gateway.health()["models"]
    assert isinstance(models, dict)
    entry = models.get("a", {})
    assert isinstance(entry, dict)
    return entry


def _ready_pid(gateway: RunningGateway) -> int:
    wait_for(lambda: _entry(gateway).get("state") == "ready", READY, "a to be ready")
    pid = _entry(gateway)["pid"]
    assert isinstance(pid, int)
    return pid


def _engine_url(gateway: RunningGateway) -> str:
    return f"http://127.0.0.1:{_entry(gateway)['port']}"


def _chat(gateway: RunningGateway, *, tokens: int = 2, timeout: float = READY) -> httpx.Response:
    body = {
        "model": "a",
        "messages": [{"role": "user", "content": "hello"}],
        "stream": False,
        "options": {"num_predict": tokens},
    }
    with httpx.Client(trust_env=False, timeout=timeout) as client:
        return client.post(gateway.url + "/api/chat", json=body)


def _engine_posts() -> int:
    """Requests the model's engine has taken, by its log (restarts append to it)."""
    return process.log_path_for("a").read_text(errors="replace").count(ENGINE_POSTS)


def _freeze_engine(gateway: RunningGateway) -> int:
    """Wedge the engine: SIGSTOP leaves its process alive and its port open (the kernel
    still queues connections) while it answers nothing, as an engine whose generation
    thread died does. (mlx-lm 0.31's own poison, a list prompt sent straight to it,
    no longer kills that thread in 0.32.) Its pid; SIGKILL ends a stopped process."""
    pid = _ready_pid(gateway)
    os.kill(pid, signal.SIGSTOP)
    return pid


class HealthLog:
    """/health of model ``a`` sampled in the background: (time, state, pid)."""

    def __init__(self, gateway: RunningGateway) -> None:
        self.samples: list[tuple[float, object, object]] = []
        self._gateway = gateway
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(trust_env=False, timeout=10) as client:
            while not self._stop.is_set():
                entry = client.get(self._gateway.url + "/health").json()["models"]["a"]
                self.samples.append((time.monotonic(), entry["state"], entry.get("pid")))
                time.sleep(0.05)

    def __enter__(self) -> HealthLog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


# What wedged or crashed the engine, or came back as its error, before the gateway
# checked requests (issue 19's list): each is refused with a 400 that says why.
REFUSED: list[tuple[str, dict[str, object], str]] = [
    ("/v1/completions", {"prompt": ["a", "b"], "max_tokens": 2}, "list of 2 prompts"),
    ("/v1/completions", {"prompt": [[1, 2]], "max_tokens": 2}, "token ids"),
    ("/v1/chat/completions", {}, "messages is required"),
    ("/v1/chat/completions", {"messages": []}, "messages must not be empty"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
        "takes text only",
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "tools": "x"},
        "tools",
    ),
    (
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "hi"}],
            "logit_bias": {str(i): 1 for i in range(100_000)},
        },
        "at most 300",
    ),
    ("/api/chat", {"options": {"num_predict": -5}}, "invalid num_predict -5"),
    ("/api/chat", {"options": {"num_predict": 0}}, "invalid num_predict 0"),
    ("/api/chat", {"options": {"num_predict": "10"}}, "invalid num_predict"),
    ("/api/chat", {"options": {"num_predict": 1.5}}, "invalid num_predict 1.5"),
    ("/api/chat", {"options": {"num_ctx": 0}}, "invalid num_ctx 0"),
    ("/api/chat", {"options": {"num_ctx": -1}}, "invalid num_ctx -1"),
    ("/api/chat", {"options": {"num_ctx": 2**40}}, "context length of 2048"),
    ("/api/chat", {"messages": [{"role": "user", "content": {"a": 1}}]}, "must be a string"),
]


def test_requests_an_engine_would_choke_on_are_refused_and_the_model_keeps_answering(
    gateway: RunningGateway,
) -> None:
    pid = _ready_pid(gateway)
    with httpx.Client(trust_env=False, timeout=30) as client:
        for path, fields, problem in REFUSED:
            body: dict[str, object] = {"model": "a", "stream": False, **fields}
            if path == "/api/chat":
                body.setdefault("messages", [{"role": "user", "content": "hi"}])
            answer = client.post(gateway.url + path, json=body)
            assert answer.status_code == 400, (path, fields, answer.text)
            error = answer.json()["error"]
            message = error["message"] if isinstance(error, dict) else error
            assert problem in message, (path, message)
        nulls = {"model": "a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": None}
        assert client.post(gateway.url + "/v1/chat/completions", json=nulls).status_code == 200
        one = {"model": "a", "prompt": ["hi"], "max_tokens": 2}
        assert client.post(gateway.url + "/v1/completions", json=one).status_code == 200
        whole = {"model": "a", "prompt": "hi", "stream": False, "options": {"num_predict": -2}}
        answer = client.post(gateway.url + "/api/generate", json=whole)
        assert answer.status_code == 200 and answer.json()["done"] is True
    assert _chat(gateway).status_code == 200
    assert _ready_pid(gateway) == pid  # the same engine throughout
    assert _entry(gateway)["in_flight"] == 0 and "failures" not in _entry(gateway)


def test_a_wedged_engine_is_caught_by_the_watchdog(
    gateway: RunningGateway,
) -> None:
    wedged = _freeze_engine(gateway)
    began = time.monotonic()
    answer = _chat(gateway)  # hangs on the wedged engine until the watchdog acts
    waited = time.monotonic() - began
    assert answer.status_code == 503, answer.text
    assert "made no progress" in answer.json()["error"]
    assert "not sent again" in answer.json()["error"]
    assert waited < WEDGE + 30  # the watchdog's limit, plus stopping a wedged engine
    assert _ready_pid(gateway) != wedged and not psutil.pid_exists(wedged)
    assert _chat(gateway).status_code == 200
    wait_for(lambda: _entry(gateway)["in_flight"] == 0, 5, "in_flight to come back to 0")
    assert _entry(gateway).get("failures") == 1


def test_sigstop_mid_stream_ends_the_stream_with_an_error_and_the_model_comes_back(
    gateway: RunningGateway,
) -> None:
    stopped = _ready_pid(gateway)
    body = {
        "model": "a",
        "messages": [{"role": "user", "content": "hello"}],
        "options": {"num_predict": 100_000},
    }
    openai = {  # an OpenAI stream in flight too, whose end never comes
        "model": "a",
        "messages": [{"role": "user", "content": "hello"}],
        "stream": True,
        "max_tokens": 100_000,
        "logit_bias": {str(SPECIAL_TOKENS.index(EOS_TOKEN)): -100},
    }
    anthropic = {  # and an Anthropic one (Claude Code's), translated from the engine's
        "model": "a",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 100_000,
        "stream": True,
    }
    lines: list[dict[str, object]] = []
    try:
        with (
            HealthLog(gateway) as health,
            httpx.Client(trust_env=False, timeout=READY) as client,
            client.stream("POST", gateway.url + "/v1/chat/completions", json=openai) as events,
            client.stream("POST", gateway.url + "/v1/messages", json=anthropic) as messages,
        ):
            sse = events.iter_lines()
            assert next(line for line in sse if line.startswith("data: {"))
            claude = messages.iter_lines()
            assert next(line for line in claude if line == "event: content_block_delta")
            with client.stream("POST", gateway.url + "/api/chat", json=body) as stream:
                for line in stream.iter_lines():
                    lines.append(json.loads(line))
                    if len(lines) == 1:
                        os.kill(stopped, signal.SIGSTOP)  # alive, port open, answers nothing
                        frozen = time.monotonic()
            ended = time.monotonic()
            last_event = [line for line in sse if line.startswith("data:")][-1]
            claude_end = [line for line in claude if line.startswith(("event:", "data:"))][-2:]
            assert _chat(gateway).status_code == 200
            answered = time.monotonic()
    finally:
        if psutil.pid_exists(stopped):
            os.kill(stopped, signal.SIGCONT)
    assert "error" in lines[-1] and lines[-1].get("done") is not True, lines[-1]
    assert "made no progress" in str(lines[-1]["error"])  # says why, as the 503 would
    assert "error" in last_event and "made no progress" in last_event, last_event
    assert claude_end[0] == "event: error", claude_end  # Anthropic's shape, not message_stop
    failure = json.loads(claude_end[1].removeprefix("data: "))
    assert failure["type"] == "error" and "made no progress" in failure["error"]["message"]
    assert ended - frozen < WEDGE + 30
    assert _ready_pid(gateway) != stopped and not psutil.pid_exists(stopped)
    after = [(state, pid) for at, state, pid in health.samples if ended <= at <= answered]
    assert after, "no /health sample between the stream's end and the next answer"
    assert all(
        state in ("restarting", "starting") or (state == "ready" and pid != stopped)
        for state, pid in after
    ), after
    wait_for(lambda: _entry(gateway)["in_flight"] == 0, 5, "in_flight to come back to 0")


def test_a_client_that_left_is_never_replayed_on_the_restarted_engine(
    gateway: RunningGateway,
) -> None:
    wedged = _freeze_engine(gateway)
    with pytest.raises(httpx.TimeoutException):  # the client gives up on the wedged engine
        _chat(gateway, timeout=1.0)
    wait_for(lambda: _entry(gateway)["in_flight"] == 0, 5, "the gone client's place to free")
    os.kill(wedged, signal.SIGKILL)
    wait_for(lambda: _entry(gateway).get("pid") not in (wedged, None), READY, "a new engine")
    _ready_pid(gateway)
    posts = _engine_posts()  # its start's own checks included
    time.sleep(2.0)  # a replay would be sent the moment the new engine is ready
    assert _engine_posts() == posts
    assert _chat(gateway).status_code == 200
    assert _engine_posts() == posts + 1  # (each request the engine answers is in its log)


def test_a_request_in_flight_at_two_engine_deaths_is_refused_and_counted_once(
    gateway: RunningGateway,
) -> None:
    first = _ready_pid(gateway)
    result: list[httpx.Response] = []
    asking = threading.Thread(target=lambda: result.append(_chat(gateway, tokens=100_000)))
    asking.start()
    try:
        wait_for(lambda: _entry(gateway)["in_flight"] == 1, 30, "the request to be in flight")
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: _entry(gateway).get("pid") not in (first, None), READY, "a restart")
        wait_for(lambda: _entry(gateway)["in_flight"] == 1, 30, "the request to be sent again")
        os.kill(_ready_pid(gateway), signal.SIGKILL)
    finally:
        asking.join(READY)
    assert result and result[0].status_code == 422, result and result[0].text
    assert "died twice" in result[0].json()["error"]
    assert _chat(gateway).status_code == 200
    assert _entry(gateway).get("failures") == 1  # the second death is blamed on the request
    assert _entry(gateway)["in_flight"] == 0


def test_keep_alive_0_stops_a_model_whose_request_hangs(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLX_LAMA_TIMINGS", "drain=1")
    manifest = _manifest(tmp_path, tiny_model, serve="on-demand")
    text = manifest.read_text().replace('wedge_timeout = "3s"', "wedge_timeout = 0")
    manifest.write_text(text)  # no watchdog: the stop alone must end it
    with gateway_in_thread(manifest, ready_timeout=READY) as running:
        assert _chat(running).status_code == 200
        hung = _ready_pid(running)
        os.kill(hung, signal.SIGSTOP)
        result: list[httpx.Response] = []
        asking = threading.Thread(target=lambda: result.append(_chat(running)))
        asking.start()
        try:
            wait_for(lambda: _entry(running)["in_flight"] == 1, 30, "the request in flight")
            unload = {"model": "a", "keep_alive": 0, "stream": False}
            with httpx.Client(trust_env=False, timeout=30) as client:
                answer = client.post(running.url + "/api/generate", json=unload)
            assert answer.status_code == 200 and answer.json()["done_reason"] == "unload"
            wait_for(lambda: _entry(running)["state"] == "stopped", 30, "a to stop")
            assert not psutil.pid_exists(hung)
        finally:
            asking.join(READY)
        assert result and result[0].status_code == 503, result and result[0].text
        assert "was stopped while answering (keep_alive 0)" in result[0].json()["error"]
        assert _entry(running)["in_flight"] == 0


def test_the_engine_queues_a_burst_of_connections_even_while_it_is_busy(
    gateway: RunningGateway,
) -> None:
    """mlx_lm.server's own listen queue holds 5 connections: the rest of a burst is
    dropped (Linux; the client tries again after 1 s) or refused (macOS). The engine
    runs with a deeper one: with the engine stopped, so that it accepts nothing,
    every connection of a burst of 32 still completes."""
    pid = _ready_pid(gateway)
    port = int(str(_entry(gateway)["port"]))
    sockets: list[socket.socket] = []
    os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(32):
            with contextlib.suppress(OSError):
                sockets.append(socket.create_connection(("127.0.0.1", port), timeout=0.5))
    finally:
        os.kill(pid, signal.SIGCONT)
        for sock in sockets:
            sock.close()
    assert len(sockets) == 32
    assert _chat(gateway).status_code == 200


def test_an_engine_crashed_by_a_request_sent_straight_to_it_comes_back(
    gateway: RunningGateway,
) -> None:
    """A huge logit_bias kills mlx_lm.server outright (the gateway refuses it, see
    REFUSED): the scheduler sees the exit and restarts the engine, once."""
    crashed = _ready_pid(gateway)
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        "logit_bias": {str(i): 1 for i in range(100_000)},
    }
    with contextlib.suppress(httpx.HTTPError), httpx.Client(trust_env=False) as client:
        client.post(_engine_url(gateway) + "/v1/chat/completions", json=body, timeout=30)
    wait_for(lambda: not psutil.pid_exists(crashed), 30, "the engine to die")
    assert _chat(gateway).status_code == 200
    assert _ready_pid(gateway) != crashed
    assert _entry(gateway).get("failures") == 1 and _entry(gateway)["in_flight"] == 0


def test_a_burst_of_parallel_streams_is_answered_in_full(gateway: RunningGateway) -> None:
    """Twelve streams at once on a fresh engine (issue 19 saw mlx-lm's batch generator
    fail on such a first burst; whatever the engine does, each ends, and the model
    answers afterwards)."""
    body = {
        "model": "a",
        "messages": [{"role": "user", "content": "hello"}],
        "options": {"num_predict": 16},
    }
    outcomes: list[object] = []

    def stream() -> None:
        with httpx.Client(trust_env=False, timeout=READY) as client:
            lines = []
            with client.stream("POST", gateway.url + "/api/chat", json=body) as answer:
                lines = [json.loads(line) for line in answer.iter_lines() if line]
            outcomes.append(lines[-1].get("done") is True or lines[-1])

    threads = [threading.Thread(target=stream) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(READY)
    assert outcomes == [True] * 12, outcomes
    assert _chat(gateway).status_code == 200
    assert _entry(gateway)["in_flight"] == 0
