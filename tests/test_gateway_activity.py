"""The recent-activity figures behind ``mlx-lama top``, on literal requests and a
clock the test moves."""

from __future__ import annotations

import pytest

from mlx_lama.gateway.activity import RATE_WINDOW, RECENT, TTFT_SAMPLES, Activity


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_model_with_no_requests_has_zeros_and_no_rates() -> None:
    figures = Activity(Clock()).model("tiny")
    assert figures["requests"] == 0 and figures["errors"] == 0
    assert figures["ttft_p50"] is None and figures["tokens_per_second"] is None
    assert figures["load_seconds"] is None and figures["last_request_at"] is None


def test_requests_add_up_per_model_and_errors_count_separately() -> None:
    clock = Clock()
    activity = Activity(clock)
    activity.request(
        "a", "/api/chat", 200, 1.0, prompt_tokens=5, completion_tokens=11, first_token=0.1
    )
    clock.now += 2
    activity.request("a", "/v1/chat/completions", 502, 0.5)
    activity.request("b", "/api/chat", 200, 0.2, prompt_tokens=1, completion_tokens=1)
    a = activity.model("a")
    assert (a["requests"], a["errors"]) == (2, 1)
    assert (a["prompt_tokens"], a["completion_tokens"]) == (5, 11)
    assert a["last_request_at"] == 1002.0
    # 10 tokens after the first, in the 0.9 s after it came.
    assert a["tokens_per_second"] == pytest.approx(10 / 0.9, rel=1e-3)
    assert activity.model("b")["requests"] == 1


def test_ttft_percentiles_come_from_the_latest_samples() -> None:
    activity = Activity(Clock())
    for ms in range(1, 101):  # 1..100 ms
        activity.request("a", "/api/chat", 200, 1.0, completion_tokens=2, first_token=ms / 1000)
    figures = activity.model("a")
    assert figures["ttft_p50"] == pytest.approx(0.0505)
    assert figures["ttft_p95"] == pytest.approx(0.09505)
    for _ in range(TTFT_SAMPLES):  # a slower spell replaces the old samples entirely
        activity.request("a", "/api/chat", 200, 1.0, completion_tokens=2, first_token=0.5)
    assert activity.model("a")["ttft_p50"] == 0.5 == activity.model("a")["ttft_p95"]


def test_loads_keep_the_latest_successful_time() -> None:
    activity = Activity(Clock())
    activity.load("a", 3.5, True)
    activity.load("a", 9.0, False)
    figures = activity.model("a")
    assert (figures["load_seconds"], figures["loads"]) == (3.5, 1)


def test_recent_requests_are_newest_first_and_bounded() -> None:
    clock = Clock()
    activity = Activity(clock)
    for i in range(RECENT + 5):
        clock.now += 1
        activity.request("a", "/api/generate", 200, 0.01 * i, completion_tokens=i)
    activity.request("", "/api/tags", 200, 0.001)  # no model: listed, not counted for one
    recent = activity.recent()
    assert len(recent) == RECENT
    assert recent[0]["endpoint"] == "/api/tags" and recent[0]["model"] == ""
    assert recent[1]["completion_tokens"] == RECENT + 4
    assert activity.model("a")["requests"] == RECENT + 5


def test_requests_per_second_counts_the_last_minute() -> None:
    clock = Clock()
    activity = Activity(clock)
    clock.now += 10  # ten seconds old: the rate is over those ten seconds
    for _ in range(20):
        activity.request("a", "/api/chat", 200, 0.1)
    figures = activity.gateway()
    assert figures["requests"] == 20 and figures["uptime_seconds"] == 10
    assert figures["requests_per_second"] == 2.0
    clock.now += RATE_WINDOW + 1  # the burst has left the window
    figures = activity.gateway()
    assert (figures["requests"], figures["requests_per_second"]) == (20, 0.0)
