"""The pure parts of ``gateway/proxy.py``: request-body scrubbing and the SSE relay."""

from __future__ import annotations

import json

from mlx_lama.gateway.proxy import SseRelay, backend_body


def test_backend_body_drops_loading_fields_and_sets_the_served_model() -> None:
    body = {
        "model": "client-name",
        "adapters": "/tmp/evil",
        "draft_model": "other/repo",
        "messages": [],
        "max_tokens": 3,
    }
    assert backend_body(body, "tiny") == {"model": "tiny", "messages": [], "max_tokens": 3}
    assert backend_body(body, None) == {"messages": [], "max_tokens": 3}


def _relay(lines: list[str], name: str = "my:model") -> tuple[SseRelay, list[bytes]]:
    relay = SseRelay(name)
    out = [event for i, line in enumerate(lines) if (event := relay.feed(line, float(i)))]
    rest = relay.flush()
    return relay, [*out, *([rest] if rest else [])]


def test_relay_rewrites_model_per_event_and_keeps_framing() -> None:
    first = {"model": "default_model", "choices": [{"delta": {"role": "assistant", "content": ""}}]}
    second = {
        "model": "default_model",
        "choices": [{"delta": {"content": 'say "model": "x"'}}],
    }
    lines = [": keepalive 1/3", "", f"data: {json.dumps(first)}", "", f"data: {json.dumps(second)}"]
    lines += ["", "data: [DONE]", ""]
    relay, events = _relay(lines)
    assert events[0] == b": keepalive 1/3\n\n"
    decoded = [json.loads(e.decode()[6:]) for e in events[1:3]]
    assert [d["model"] for d in decoded] == ["my:model", "my:model"]
    assert decoded[1]["choices"][0]["delta"]["content"] == 'say "model": "x"'  # untouched
    assert events[3] == b"data: [DONE]\n\n"
    assert relay.done is True
    assert relay.first_content == 4.0  # the first event with non-empty content


def test_relay_notes_usage_and_a_missing_done() -> None:
    final = {"model": "m", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7}}
    relay, events = _relay([f"data: {json.dumps(final)}"])  # no blank line, no [DONE]
    assert relay.usage == {"prompt_tokens": 5, "completion_tokens": 7}
    assert relay.done is False
    assert json.loads(events[0].decode()[6:])["model"] == "my:model"


def test_relay_escapes_the_client_name_as_json() -> None:
    _relay_obj, events = _relay(['data: {"model": "m", "choices": []}', ""], name='we"ird')
    assert json.loads(events[0].decode()[6:])["model"] == 'we"ird'
