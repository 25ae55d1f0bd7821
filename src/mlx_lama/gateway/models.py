"""What the gateway says about a model: ``/api/tags`` entries and ``/api/show`` bodies.

Built from the manifest entry, the snapshot's ``config.json`` (and tokenizer
config) and cache facts the caller passes in. Pure: the caller reads the
files; nothing here touches the disk or the clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from mlx_lama.gateway.fim import layout_for
from mlx_lama.orchestrator.facts import ModelFacts
from mlx_lama.schema.manifest import ModelEntry
from mlx_lama.schema.modelfile_render import ModelfileRenderError, parameter_lines, render_modelfile

JsonObject = dict[str, Any]


def parameter_count(config: Mapping[str, Any]) -> int | None:
    """Weights in a decoder-only transformer described by ``config``, or None if unknown.

    Counts embeddings, attention (grouped-query aware), the gated MLP (times
    the experts of a mixture) and norms: within a few percent of published sizes.
    """
    try:
        hidden = int(config["hidden_size"])
        layers = int(config["num_hidden_layers"])
        vocab = int(config["vocab_size"])
        intermediate = int(config.get("intermediate_size") or 4 * hidden)
        heads = int(config.get("num_attention_heads") or 1)
        kv_heads = int(config.get("num_key_value_heads") or heads)
    except (KeyError, TypeError, ValueError):
        return None
    head_dim = int(config.get("head_dim") or hidden // heads)
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    experts = int(config.get("num_local_experts") or config.get("num_experts") or 1)
    mlp = 3 * hidden * intermediate * experts
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings", False) else 2)
    return layers * (attention + mlp + 2 * hidden) + embeddings + hidden


def human_count(count: int) -> str:
    """``7615616512`` -> ``7.6B``, as Ollama writes ``parameter_size``."""
    for suffix, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if count >= scale:
            return f"{count / scale:.1f}{suffix}"
    return str(count)


def quantization_level(config: Mapping[str, Any]) -> str:
    """``Q4`` for 4-bit MLX weights, else the float type (``BF16``, ``F16``, ``F32``)."""
    quant = config.get("quantization") or config.get("quantization_config")
    if isinstance(quant, Mapping) and quant.get("bits"):
        return f"Q{quant['bits']}"
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "").lower()
    return {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}.get(dtype, "unknown")


def details(config: Mapping[str, Any]) -> JsonObject:
    """Ollama's ``details`` object for a safetensors (MLX) model."""
    family = str(config.get("model_type") or "unknown")
    count = parameter_count(config)
    result: JsonObject = {
        "parent_model": "",
        "format": "safetensors",
        "family": family,
        "families": [family],
        "parameter_size": human_count(count) if count else "",
        "quantization_level": quantization_level(config),
    }
    context = config.get("max_position_embeddings")
    if isinstance(context, int):
        result["context_length"] = context
    if isinstance(config.get("hidden_size"), int):
        result["embedding_length"] = config["hidden_size"]
    return result


def model_info(config: Mapping[str, Any]) -> JsonObject:
    """The GGUF-style key/value map Ollama always includes in ``/api/show``."""
    arch = str(config.get("model_type") or "unknown")
    info: JsonObject = {"general.architecture": arch}
    count = parameter_count(config)
    if count:
        info["general.parameter_count"] = count
    for key, source in (
        ("context_length", "max_position_embeddings"),
        ("embedding_length", "hidden_size"),
        ("block_count", "num_hidden_layers"),
        ("feed_forward_length", "intermediate_size"),
        ("attention.head_count", "num_attention_heads"),
        ("attention.head_count_kv", "num_key_value_heads"),
    ):
        if config.get(source) is not None:
            info[f"{arch}.{key}"] = config[source]
    return info


def takes_images(config: Mapping[str, Any], engine_vision: bool) -> bool:
    """Whether a model answers images: it has a vision tower (a ``vision_config``)
    and its engine takes images."""
    return engine_vision and "vision_config" in config


def capabilities(facts: ModelFacts, *, embeddings: bool = False, vision: bool) -> list[str]:
    """Ollama capability names: completion (or embedding), tools (the chat template
    takes tools), insert (fill-in-the-middle tokens, ``fim.py``), vision (``vision``:
    :func:`takes_images`), thinking (the template has a thinking switch or thinks)."""
    result = ["embedding"] if embeddings else ["completion"]
    template = facts.chat_template
    if "tools" in template:
        result.append("tools")
    if not embeddings and layout_for(facts.added_tokens) is not None:
        result.append("insert")
    if vision:
        result.append("vision")
    if "enable_thinking" in template or "<think>" in template:
        result.append("thinking")
    return result


def digest(name: str, commit: str | None) -> str:
    """A stable 64-hex digest for ``/api/tags`` (Ollama shows a manifest sha256)."""
    return hashlib.sha256(f"{name}@{commit or ''}".encode()).hexdigest()


def iso_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def tags_entry(name: str, facts: ModelFacts) -> JsonObject:
    """One ``/api/tags`` model. ``name`` is shown with its tag (``:latest`` when none)."""
    shown = name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"
    return {
        "name": shown,
        "model": shown,
        "modified_at": iso_time(facts.modified),
        "size": facts.size,
        "digest": digest(name, facts.commit),
        "details": details(facts.config),
    }


def show_response(
    name: str, entry: ModelEntry, facts: ModelFacts, *, vision: bool, system: str | None = None
) -> JsonObject:
    """The ``/api/show`` body; ``model_info`` is always present, as in Ollama."""
    try:
        modelfile = render_modelfile(name, entry, system=system)
    except ModelfileRenderError as error:  # the rest of the answer is still worth having
        modelfile = f"# {error}\n"
    return {
        "license": "\n".join(entry.license),
        "modelfile": modelfile,
        "parameters": "\n".join(parameter_lines(entry)),
        "template": entry.template or facts.chat_template,
        "system": system if system is not None else entry.system or "",
        "details": details(facts.config),
        "model_info": model_info(facts.config),
        "capabilities": capabilities(facts, embeddings=entry.kind == "embedding", vision=vision),
        "modified_at": iso_time(facts.modified),
    }
