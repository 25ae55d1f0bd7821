"""Ollama's ``think``: the chat template's own switch, or a 400 where there is none.

A real gateway and real mlx_lm.server engines on the tiny model: ``plain`` with
its own template (no thinking), ``thinker`` with a template whose
``enable_thinking`` switch writes two words when thinking is turned off, so the
prompt's token count shows what reached the engine.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.fixtures.gateway import gateway_in_thread

SWITCH = (
    "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    "{% if enable_thinking is defined and enable_thinking is false %}quiet please {% endif %}"
)


def _chat(url: str, model: str, think: object) -> httpx.Response:
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
        "options": {"num_predict": 1},
    }
    if think is not None:
        body["think"] = think
    return httpx.post(url + "/api/chat", json=body, timeout=120, trust_env=False)


def test_think_uses_the_templates_switch_and_is_refused_where_there_is_none(
    tmp_path: Path, tiny_model: Path
) -> None:
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(
        f'version = 1\n\n[models.plain]\npath = "{tiny_model}"\n\n'
        f'[models.thinker]\npath = "{tiny_model}"\ntemplate = """{SWITCH}"""\n',
        encoding="utf-8",
    )
    with gateway_in_thread(manifest) as running:
        url = running.url
        refused = _chat(url, "plain", True)
        assert refused.status_code == 400
        assert "does not support thinking" in refused.json()["error"]
        assert _chat(url, "plain", False).status_code == 200  # nothing to turn off
        bad = _chat(url, "thinker", "maximum")
        assert bad.status_code == 400 and "think must be" in bad.json()["error"]

        counts = {}
        for think in (None, True, False, "high"):
            answer = _chat(url, "thinker", think)
            assert answer.status_code == 200, answer.text
            counts[think] = answer.json()["prompt_eval_count"]
        # Off: the template's switch wrote its two words; on (or a level): it did not.
        assert counts[False] == counts[True] + 2
        assert counts["high"] == counts[True]
        # Left out: mlx-lm's own default, off for a model without think tokens.
        assert counts[None] == counts[False]
