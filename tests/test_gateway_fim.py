"""Fill in the middle (``fim.py``, ``facts.added_tokens``): an editor's prefix and suffix
become the frame of the model's own fill-in-the-middle tokens, on Ollama's
``/api/generate`` and OpenAI's ``/v1/completions``; a model without such tokens
gets a 400 that names the families that have them.

The engine test serves a copy of the tiny model whose tokenizer has Qwen2.5-Coder's
three tokens (three of its words renamed, so the weights still fit), through a
real ``mlx_lm.server``, and counts the prompt tokens the engine read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from mlx_lama.gateway import fim
from mlx_lama.orchestrator.facts import added_tokens
from tests.fixtures.gateway import gateway_in_thread

QWEN = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")


@pytest.mark.parametrize(
    ("tokens", "prompt"),
    [
        (["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|endoftext|>"],
         "<|fim_prefix|>def f(<|fim_suffix|>)\n<|fim_middle|>"),
        (["<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<fim_pad>"],
         "<fim_prefix>def f(<fim_suffix>)\n<fim_middle>"),
        (["<\uff5cfim\u2581begin\uff5c>", "<\uff5cfim\u2581hole\uff5c>",
          "<\uff5cfim\u2581end\uff5c>"],
         "<\uff5cfim\u2581begin\uff5c>def f(<\uff5cfim\u2581hole\uff5c>)\n"
         "<\uff5cfim\u2581end\uff5c>"),
        (["[INST]", "[SUFFIX]", "[PREFIX]", "[MIDDLE]"], "[SUFFIX])\n[PREFIX]def f("),
    ],
)  # fmt: skip
def test_each_family_gets_its_own_frame(tokens: list[str], prompt: str) -> None:
    framed = fim.fim_prompt(frozenset(tokens), "def f(", ")\n")
    assert framed is not None
    assert framed[0] == prompt
    assert set(framed[1]) <= set(tokens) and framed[1]


def test_a_model_without_the_tokens_cannot_fill_in_the_middle() -> None:
    assert fim.fim_prompt(frozenset({"<s>", "</s>", "<|fim_prefix|>"}), "a", "b") is None
    message = fim.unsupported("chatty")
    assert "model 'chatty' cannot fill in the middle" in message
    assert "<|fim_prefix|>" in message and "qwen2.5-coder" in message


def test_added_tokens_come_from_the_tokenizer_config_else_tokenizer_json(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text(
        json.dumps({"added_tokens": [{"id": 0, "content": "<a>"}, {"id": 1, "content": "<b>"}]})
    )
    assert added_tokens(tmp_path) == {"<a>", "<b>"}
    config = {"added_tokens_decoder": {"5": {"content": "<|fim_prefix|>", "special": False}}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert added_tokens(tmp_path) == {"<|fim_prefix|>"}
    assert added_tokens(None) == frozenset()
    assert added_tokens(tmp_path / "missing") == frozenset()


def fim_model(source: Path, dest: Path) -> Path:
    """A copy of the tiny model whose tokenizer knows Qwen's fill-in-the-middle tokens,
    in place of three of its words (the vocabulary keeps its size)."""
    shutil.copytree(source, dest)
    path = dest / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    for word, token in zip(("kid", "guy", "cow"), QWEN, strict=True):
        index = vocab.pop(word)
        vocab[token] = index
        data["added_tokens"].append(
            {"id": index, "content": token, "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": True}
        )  # fmt: skip
    path.write_text(json.dumps(data))
    return dest


@pytest.mark.server
def test_an_editors_suffix_reaches_the_engine_framed_for_the_middle(
    tmp_path: Path, tiny_model: Path
) -> None:
    coder = fim_model(tiny_model, tmp_path / "coder")
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(
        f'version = 1\n\n[models."coder"]\npath = "{coder}"\n\n'
        f'[models."chatty"]\npath = "{tiny_model}"\n',
        encoding="utf-8",
    )
    # the frame's three tokens and the four words: no chat template around them
    framed_tokens = 3 + 4
    with gateway_in_thread(manifest) as running:
        with ollama.Client(host=running.url) as client:
            answer = client.generate(
                "coder", prompt="the cat", suffix="and dog", options={"num_predict": 3}
            )
            assert answer.prompt_eval_count == framed_tokens
            assert answer.response and answer.done
            plain = client.generate("coder", prompt="the cat", options={"num_predict": 1})
            assert plain.prompt_eval_count != framed_tokens  # the chat template applies
            with pytest.raises(ollama.ResponseError) as refused:
                client.generate("chatty", prompt="the cat", suffix="and dog")
            assert refused.value.status_code == 400
            assert "cannot fill in the middle" in refused.value.error
        with openai.OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0) as oai:
            completion = oai.completions.create(
                model="coder", prompt="the cat", suffix="and dog", max_tokens=2
            )
            assert completion.usage is not None
            assert completion.usage.prompt_tokens == framed_tokens
        refused_v1 = httpx.post(
            running.url + "/v1/completions",
            json={"model": "chatty", "prompt": "the cat", "suffix": "and dog", "max_tokens": 2},
        )
        assert refused_v1.status_code == 400
        assert "cannot fill in the middle" in refused_v1.json()["error"]["message"]
