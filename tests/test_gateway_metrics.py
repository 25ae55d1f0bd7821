"""The gateway's Prometheus metrics: golden text, histogram shape, escaping, threads."""

from __future__ import annotations

import re
import threading

from mlx_lama.gateway.metrics import (
    CONTENT_TYPE,
    MAX_LABEL_VALUES,
    OVERFLOW_LABEL,
    TTFT_BUCKETS,
    LoadedModel,
    Metrics,
)

# One sample line of the 0.0.4 text format: name, optional {labels}, value.
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_VALUE = r"(?:[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]Inf|NaN)"
_SAMPLE = re.compile(rf"({_NAME}(?:\{{{_LABEL}(?:,{_LABEL})*\}})?) ({_VALUE})")
_COMMENT = re.compile(rf"# (?:HELP {_NAME} .*|TYPE {_NAME} (?:counter|gauge|histogram))")

FAMILIES = [
    ("mlx_lama_requests_total", "counter"),
    ("mlx_lama_request_errors_total", "counter"),
    ("mlx_lama_request_duration_seconds", "histogram"),
    ("mlx_lama_prompt_tokens_total", "counter"),
    ("mlx_lama_completion_tokens_total", "counter"),
    ("mlx_lama_time_to_first_token_seconds", "histogram"),
    ("mlx_lama_model_loads_total", "counter"),
    ("mlx_lama_model_load_duration_seconds", "histogram"),
    ("mlx_lama_loaded_models", "gauge"),
    ("mlx_lama_model_memory_bytes", "gauge"),
]


def samples(text: str) -> dict[str, str]:
    """``name{labels}`` -> value for every sample line; fails on any malformed line."""
    assert text.endswith("\n")
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert _COMMENT.fullmatch(line), line
            continue
        match = _SAMPLE.fullmatch(line)
        assert match, line
        assert match[1] not in out, f"duplicate series {match[1]}"
        out[match[1]] = match[2]
    return out


def types(text: str) -> list[tuple[str, str]]:
    return [
        (parts[2], parts[3])
        for parts in (line.split(" ") for line in text.splitlines())
        if parts[:2] == ["#", "TYPE"]
    ]


GOLDEN = """\
# HELP mlx_lama_requests_total Finished requests.
# TYPE mlx_lama_requests_total counter
mlx_lama_requests_total{model="",endpoint="/api/tags",status="200"} 1
mlx_lama_requests_total{model="llama",endpoint="/api/chat",status="200"} 1
mlx_lama_requests_total{model="llama",endpoint="/api/chat",status="502"} 1
# HELP mlx_lama_request_errors_total Requests answered with status >= 400.
# TYPE mlx_lama_request_errors_total counter
mlx_lama_request_errors_total{model="llama",endpoint="/api/chat"} 1
# HELP mlx_lama_request_duration_seconds Time from request to last byte.
# TYPE mlx_lama_request_duration_seconds histogram
mlx_lama_request_duration_seconds_bucket{model="",endpoint="/api/tags",le="0.01"} 1
mlx_lama_request_duration_seconds_bucket{model="",endpoint="/api/tags",le="0.025"} 1
mlx_lama_request_duration_seconds_bucket{model="",endpoint="/api/tags",le="0.05"} 1
mlx_lama_request_duration_seconds_bucket{model="",endpoint="/api/tags",le="0.1"} 1
mlx_lama_request_duration_seconds_bucket{model="",endpoint="/api/tags",le="0.25"} 1
mlx_lama_request_duration_seconds_bucket{model="",endpoint="/api/tags",le="0.5"} 1
mlx_lama_request_duration_seconds_bucket{model="",endpoint="/api/tags",le="1"} 1
mlx_lama_request_duration_seconds_bucket{model="",endpoint="/api/tags",le="2.5"} 1
mlx_lama_request_duration_seconds_bucket{model="",endpoint="/api/tags",le="5"} 1
mlx_lama_request_duration_seconds_bucket{model="",endpoint="/api/tags",le="10"} 1
mlx_lama_request_duration_seconds_bucket{model="",endpoint="/api/tags",le="30"} 1
mlx_lama_request_duration_seconds_bucket{model="",endpoint="/api/tags",le="60"} 1
mlx_lama_request_duration_seconds_bucket{model="",endpoint="/api/tags",le="120"} 1
mlx_lama_request_duration_seconds_bucket{model="",endpoint="/api/tags",le="300"} 1
mlx_lama_request_duration_seconds_bucket{model="",endpoint="/api/tags",le="+Inf"} 1
mlx_lama_request_duration_seconds_sum{model="",endpoint="/api/tags"} 0.002
mlx_lama_request_duration_seconds_count{model="",endpoint="/api/tags"} 1
mlx_lama_request_duration_seconds_bucket{model="llama",endpoint="/api/chat",le="0.01"} 0
mlx_lama_request_duration_seconds_bucket{model="llama",endpoint="/api/chat",le="0.025"} 0
mlx_lama_request_duration_seconds_bucket{model="llama",endpoint="/api/chat",le="0.05"} 1
mlx_lama_request_duration_seconds_bucket{model="llama",endpoint="/api/chat",le="0.1"} 1
mlx_lama_request_duration_seconds_bucket{model="llama",endpoint="/api/chat",le="0.25"} 1
mlx_lama_request_duration_seconds_bucket{model="llama",endpoint="/api/chat",le="0.5"} 1
mlx_lama_request_duration_seconds_bucket{model="llama",endpoint="/api/chat",le="1"} 1
mlx_lama_request_duration_seconds_bucket{model="llama",endpoint="/api/chat",le="2.5"} 2
mlx_lama_request_duration_seconds_bucket{model="llama",endpoint="/api/chat",le="5"} 2
mlx_lama_request_duration_seconds_bucket{model="llama",endpoint="/api/chat",le="10"} 2
mlx_lama_request_duration_seconds_bucket{model="llama",endpoint="/api/chat",le="30"} 2
mlx_lama_request_duration_seconds_bucket{model="llama",endpoint="/api/chat",le="60"} 2
mlx_lama_request_duration_seconds_bucket{model="llama",endpoint="/api/chat",le="120"} 2
mlx_lama_request_duration_seconds_bucket{model="llama",endpoint="/api/chat",le="300"} 2
mlx_lama_request_duration_seconds_bucket{model="llama",endpoint="/api/chat",le="+Inf"} 2
mlx_lama_request_duration_seconds_sum{model="llama",endpoint="/api/chat"} 1.54
mlx_lama_request_duration_seconds_count{model="llama",endpoint="/api/chat"} 2
# HELP mlx_lama_prompt_tokens_total Prompt tokens processed.
# TYPE mlx_lama_prompt_tokens_total counter
mlx_lama_prompt_tokens_total{model="llama"} 12
# HELP mlx_lama_completion_tokens_total Completion tokens generated.
# TYPE mlx_lama_completion_tokens_total counter
mlx_lama_completion_tokens_total{model="llama"} 30
# HELP mlx_lama_time_to_first_token_seconds Time from request to first token.
# TYPE mlx_lama_time_to_first_token_seconds histogram
mlx_lama_time_to_first_token_seconds_bucket{model="llama",le="0.005"} 0
mlx_lama_time_to_first_token_seconds_bucket{model="llama",le="0.01"} 0
mlx_lama_time_to_first_token_seconds_bucket{model="llama",le="0.025"} 0
mlx_lama_time_to_first_token_seconds_bucket{model="llama",le="0.05"} 0
mlx_lama_time_to_first_token_seconds_bucket{model="llama",le="0.1"} 1
mlx_lama_time_to_first_token_seconds_bucket{model="llama",le="0.25"} 1
mlx_lama_time_to_first_token_seconds_bucket{model="llama",le="0.5"} 1
mlx_lama_time_to_first_token_seconds_bucket{model="llama",le="1"} 1
mlx_lama_time_to_first_token_seconds_bucket{model="llama",le="2.5"} 1
mlx_lama_time_to_first_token_seconds_bucket{model="llama",le="5"} 1
mlx_lama_time_to_first_token_seconds_bucket{model="llama",le="10"} 1
mlx_lama_time_to_first_token_seconds_bucket{model="llama",le="+Inf"} 1
mlx_lama_time_to_first_token_seconds_sum{model="llama"} 0.08
mlx_lama_time_to_first_token_seconds_count{model="llama"} 1
# HELP mlx_lama_model_loads_total Model server starts, by result.
# TYPE mlx_lama_model_loads_total counter
mlx_lama_model_loads_total{model="llama",result="ok"} 1
# HELP mlx_lama_model_load_duration_seconds Time to start a model server.
# TYPE mlx_lama_model_load_duration_seconds histogram
mlx_lama_model_load_duration_seconds_bucket{model="llama",le="0.5"} 0
mlx_lama_model_load_duration_seconds_bucket{model="llama",le="1"} 0
mlx_lama_model_load_duration_seconds_bucket{model="llama",le="2.5"} 0
mlx_lama_model_load_duration_seconds_bucket{model="llama",le="5"} 1
mlx_lama_model_load_duration_seconds_bucket{model="llama",le="10"} 1
mlx_lama_model_load_duration_seconds_bucket{model="llama",le="30"} 1
mlx_lama_model_load_duration_seconds_bucket{model="llama",le="60"} 1
mlx_lama_model_load_duration_seconds_bucket{model="llama",le="120"} 1
mlx_lama_model_load_duration_seconds_bucket{model="llama",le="300"} 1
mlx_lama_model_load_duration_seconds_bucket{model="llama",le="600"} 1
mlx_lama_model_load_duration_seconds_bucket{model="llama",le="+Inf"} 1
mlx_lama_model_load_duration_seconds_sum{model="llama"} 3.5
mlx_lama_model_load_duration_seconds_count{model="llama"} 1
# HELP mlx_lama_loaded_models Model servers running now.
# TYPE mlx_lama_loaded_models gauge
mlx_lama_loaded_models 2
# HELP mlx_lama_model_memory_bytes Estimated resident size of each loaded model.
# TYPE mlx_lama_model_memory_bytes gauge
mlx_lama_model_memory_bytes{model="llama",pinned="true"} 4600000000
mlx_lama_model_memory_bytes{model="qwen",pinned="false"} 1500000000
# HELP mlx_lama_memory_budget_bytes Memory the gateway may fill with models.
# TYPE mlx_lama_memory_budget_bytes gauge
mlx_lama_memory_budget_bytes 16000000000
"""


def test_render_matches_golden_text_for_a_small_scenario() -> None:
    metrics = Metrics()
    metrics.load("llama", 3.5, ok=True)
    metrics.request("llama", "/api/chat", 200, 1.5)
    metrics.first_token("llama", 0.08)
    metrics.tokens("llama", prompt=12, completion=30)
    metrics.request("llama", "/api/chat", 502, 0.04)  # an error
    metrics.request("", "/api/tags", 200, 0.002)  # no model
    loaded = [
        LoadedModel("qwen", 1_500_000_000, pinned=False),  # out of order on purpose
        LoadedModel("llama", 4_600_000_000, pinned=True),
    ]

    text = metrics.render(loaded, memory_budget_bytes=16_000_000_000)

    assert text == GOLDEN
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_every_line_is_a_comment_or_a_sample() -> None:
    metrics = Metrics()
    metrics.request("llama", "/v1/chat/completions", 429, 0.3)
    metrics.load("llama", 700.0, ok=False)
    text = metrics.render([LoadedModel("llama", 1, pinned=False)], memory_budget_bytes=None)

    found = samples(text)

    assert len(found) == len(text.splitlines()) - 2 * len(FAMILIES)
    assert found['mlx_lama_model_loads_total{model="llama",result="error"}'] == "1"
    assert found['mlx_lama_model_load_duration_seconds_bucket{model="llama",le="600"}'] == "0"
    assert found['mlx_lama_model_load_duration_seconds_bucket{model="llama",le="+Inf"}'] == "1"
    # HELP always directly precedes the TYPE of the same family.
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# TYPE "):
            assert lines[i - 1].startswith(f"# HELP {line.split(' ')[2]} ")


def test_histogram_buckets_are_cumulative_and_count_matches_observations() -> None:
    metrics = Metrics()
    observations = [0.001, 0.005, 0.0051, 0.3, 0.3, 2.0, 9.99, 10.0, 25.0]
    for seconds in observations:
        metrics.first_token("m", seconds)

    found = samples(metrics.render([], memory_budget_bytes=None))

    buckets = [
        int(found[f'mlx_lama_time_to_first_token_seconds_bucket{{model="m",le="{le}"}}'])
        for le in [*(f"{b:g}" for b in TTFT_BUCKETS), "+Inf"]
    ]
    assert buckets == sorted(buckets)  # cumulative: never decreasing
    # le is inclusive: 0.005 lands in le="0.005", 10.0 in le="10", 25.0 only in +Inf.
    assert buckets == [2, 3, 3, 3, 3, 3, 5, 5, 6, 6, 8, 9]
    count = found['mlx_lama_time_to_first_token_seconds_count{model="m"}']
    assert int(count) == buckets[-1] == len(observations)
    total = float(found['mlx_lama_time_to_first_token_seconds_sum{model="m"}'])
    assert abs(total - sum(observations)) < 1e-9


def test_floats_are_formatted_as_go_does() -> None:
    metrics = Metrics()
    metrics.first_token("tiny", 0.00001)
    metrics.load("slow", 1_234_567.0, ok=True)
    metrics.request("m", "/api/chat", 200, 2.0)

    found = samples(metrics.render([], memory_budget_bytes=None))

    assert found['mlx_lama_time_to_first_token_seconds_sum{model="tiny"}'] == "1e-05"
    assert found['mlx_lama_model_load_duration_seconds_sum{model="slow"}'] == "1.234567e+06"
    assert found['mlx_lama_request_duration_seconds_sum{model="m",endpoint="/api/chat"}'] == "2"


def test_label_values_are_escaped() -> None:
    nasty = 'a"b\\c\nd'
    metrics = Metrics()
    metrics.request(nasty, "/api/chat", 200, 0.1)
    metrics.tokens(nasty, 1, 2)
    text = metrics.render([LoadedModel(nasty, 10, pinned=True)], memory_budget_bytes=None)

    found = samples(text)  # a raw newline or quote would break the line format

    escaped = 'a\\"b\\\\c\\nd'
    assert found[f'mlx_lama_prompt_tokens_total{{model="{escaped}"}}'] == "1"
    assert found[f'mlx_lama_completion_tokens_total{{model="{escaped}"}}'] == "2"
    assert found[f'mlx_lama_model_memory_bytes{{model="{escaped}",pinned="true"}}'] == "10"
    key = f'mlx_lama_requests_total{{model="{escaped}",endpoint="/api/chat",status="200"}}'
    assert found[key] == "1"


def test_empty_metrics_render_every_family_and_zero_loaded_models() -> None:
    text = Metrics().render([], memory_budget_bytes=None)

    assert types(text) == FAMILIES
    assert samples(text) == {"mlx_lama_loaded_models": "0"}
    for name, _ in FAMILIES:
        assert f"# HELP {name} " in text
    assert "memory_budget_bytes" not in text


def test_memory_budget_appears_only_when_given() -> None:
    text = Metrics().render([], memory_budget_bytes=0)

    assert types(text) == [*FAMILIES, ("mlx_lama_memory_budget_bytes", "gauge")]
    assert samples(text)["mlx_lama_memory_budget_bytes"] == "0"


def test_only_status_400_and_above_counts_as_an_error() -> None:
    metrics = Metrics()
    for status in (200, 304, 399, 400, 404, 500):
        metrics.request("m", "/api/generate", status, 0.1)

    found = samples(metrics.render([], memory_budget_bytes=None))

    assert found['mlx_lama_request_errors_total{model="m",endpoint="/api/generate"}'] == "3"
    statuses = [k for k in found if k.startswith("mlx_lama_requests_total")]
    assert statuses == [  # sorted numerically by status
        f'mlx_lama_requests_total{{model="m",endpoint="/api/generate",status="{s}"}}'
        for s in (200, 304, 399, 400, 404, 500)
    ]
    assert found['mlx_lama_request_duration_seconds_count{model="m",endpoint="/api/generate"}'] == (
        "6"
    )


def test_bad_inputs_never_make_counters_go_down() -> None:
    metrics = Metrics()
    metrics.tokens("m", prompt=5, completion=7)
    metrics.tokens("m", prompt=-100, completion=-1)
    metrics.first_token("m", -1.0)
    metrics.first_token("m", float("nan"))

    found = samples(metrics.render([], memory_budget_bytes=None))

    assert found['mlx_lama_prompt_tokens_total{model="m"}'] == "5"
    assert found['mlx_lama_completion_tokens_total{model="m"}'] == "7"
    assert found['mlx_lama_time_to_first_token_seconds_sum{model="m"}'] == "0"
    assert found['mlx_lama_time_to_first_token_seconds_bucket{model="m",le="0.005"}'] == "2"


def test_label_cardinality_is_capped() -> None:
    metrics = Metrics()
    extra = 5
    for i in range(MAX_LABEL_VALUES + extra):
        metrics.request(f"model-{i:04d}", f"/route/{i}", 200, 0.1)

    found = samples(metrics.render([], memory_budget_bytes=None))

    requests = {k: v for k, v in found.items() if k.startswith("mlx_lama_requests_total")}
    assert len(requests) == MAX_LABEL_VALUES + 1  # the first ones, plus one overflow series
    overflow = (
        f'mlx_lama_requests_total{{model="{OVERFLOW_LABEL}",'
        f'endpoint="{OVERFLOW_LABEL}",status="200"}}'
    )
    assert requests[overflow] == str(extra)
    assert sum(int(v) for v in requests.values()) == MAX_LABEL_VALUES + extra


def test_concurrent_recording_adds_up() -> None:
    metrics = Metrics()
    threads_n, per_thread = 8, 500
    start = threading.Barrier(threads_n + 1)
    renders: list[str] = []

    def record(worker: int) -> None:
        start.wait()
        for i in range(per_thread):
            metrics.request("m", "/api/chat", 500 if i % 10 == 0 else 200, 0.01 * worker)
            metrics.tokens("m", prompt=2, completion=3)
            metrics.first_token("m", 0.05)

    def scrape() -> None:
        start.wait()
        for _ in range(20):
            renders.append(metrics.render([], memory_budget_bytes=None))

    workers = [threading.Thread(target=record, args=(w,)) for w in range(threads_n)]
    scraper = threading.Thread(target=scrape)
    for thread in [*workers, scraper]:
        thread.start()
    for thread in [*workers, scraper]:
        thread.join(timeout=60)

    total = threads_n * per_thread
    found = samples(metrics.render([], memory_budget_bytes=None))
    ok = found['mlx_lama_requests_total{model="m",endpoint="/api/chat",status="200"}']
    failed = found['mlx_lama_requests_total{model="m",endpoint="/api/chat",status="500"}']
    assert int(ok) + int(failed) == total
    assert found['mlx_lama_request_errors_total{model="m",endpoint="/api/chat"}'] == failed
    assert found['mlx_lama_request_duration_seconds_count{model="m",endpoint="/api/chat"}'] == (
        str(total)
    )
    assert found['mlx_lama_prompt_tokens_total{model="m"}'] == str(2 * total)
    assert found['mlx_lama_completion_tokens_total{model="m"}'] == str(3 * total)
    assert found['mlx_lama_time_to_first_token_seconds_count{model="m"}'] == str(total)
    # Scrapes taken mid-flight are well formed and internally consistent.
    assert len(renders) == 20
    for text in renders:
        mid = samples(text)
        count = mid.get('mlx_lama_time_to_first_token_seconds_count{model="m"}', "0")
        inf = mid.get('mlx_lama_time_to_first_token_seconds_bucket{model="m",le="+Inf"}', "0")
        assert count == inf


def test_measured_memory_and_crashes_are_reported_per_server() -> None:
    loaded = [
        LoadedModel("qwen", 1_500_000_000, pinned=False, resident_bytes=900_000_000),
        LoadedModel("llama", 4_600_000_000, pinned=True),  # its size could not be read
    ]
    text = Metrics().render(loaded, memory_budget_bytes=None, crashes={"qwen": 2, "gone": 1})

    found = samples(text)

    assert found['mlx_lama_server_resident_bytes{model="qwen"}'] == "900000000"
    assert not any(k.startswith('mlx_lama_server_resident_bytes{model="llama"') for k in found)
    assert found['mlx_lama_server_crashes_total{model="qwen"}'] == "2"
    assert found['mlx_lama_server_crashes_total{model="gone"}'] == "1"
    assert "# TYPE mlx_lama_server_crashes_total counter" in text
    assert "# TYPE mlx_lama_server_resident_bytes gauge" in text
