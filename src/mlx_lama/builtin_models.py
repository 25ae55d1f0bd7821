"""The built-in alias table: current mlx-community MLX models under Ollama names.

Plain literals, read by :mod:`mlx_lama.registry` as its lowest layer. Kept
apart so the table can be updated without touching resolution logic. Every
repo is in the ``mlx-community`` namespace; the text models are 4-bit
conversions, the embedding models whatever their MLX conversion is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

# (name, mlx-community repo, description). Ollama library names where they exist;
# `:latest` rows copy Ollama's default tag where the :latest/:7b/:8b fallbacks
# would not find it. The last block keeps the earlier mlx-lama's short names.

_TABLE: Final[tuple[tuple[str, str, str], ...]] = (
    # Llama 3.1 / 3.2 / 3.3
    ("llama3.1:8b", "Meta-Llama-3.1-8B-Instruct-4bit", "Llama 3.1 8B Instruct, general chat"),
    ("llama3.1:70b", "Meta-Llama-3.1-70B-Instruct-4bit", "Llama 3.1 70B Instruct, large"),
    ("llama3.2:1b", "Llama-3.2-1B-Instruct-4bit", "Llama 3.2 1B Instruct, tiny and fast"),
    ("llama3.2:3b", "Llama-3.2-3B-Instruct-4bit", "Llama 3.2 3B Instruct, small general"),
    ("llama3.2:latest", "Llama-3.2-3B-Instruct-4bit", "Llama 3.2 3B Instruct (default tag)"),
    ("llama3.3:70b", "Llama-3.3-70B-Instruct-4bit", "Llama 3.3 70B Instruct, large"),
    ("llama3.3:latest", "Llama-3.3-70B-Instruct-4bit", "Llama 3.3 70B Instruct (default tag)"),
    # Qwen 2.5
    ("qwen2.5:0.5b", "Qwen2.5-0.5B-Instruct-4bit", "Qwen 2.5 0.5B Instruct, tiny"),
    ("qwen2.5:1.5b", "Qwen2.5-1.5B-Instruct-4bit", "Qwen 2.5 1.5B Instruct, small"),
    ("qwen2.5:3b", "Qwen2.5-3B-Instruct-4bit", "Qwen 2.5 3B Instruct, small"),
    ("qwen2.5:7b", "Qwen2.5-7B-Instruct-4bit", "Qwen 2.5 7B Instruct, general"),
    ("qwen2.5:14b", "Qwen2.5-14B-Instruct-4bit", "Qwen 2.5 14B Instruct, general"),
    ("qwen2.5:32b", "Qwen2.5-32B-Instruct-4bit", "Qwen 2.5 32B Instruct, strong all-rounder"),
    ("qwen2.5:72b", "Qwen2.5-72B-Instruct-4bit", "Qwen 2.5 72B Instruct, large"),
    # Qwen 3 (hybrid thinking)
    ("qwen3:0.6b", "Qwen3-0.6B-4bit", "Qwen 3 0.6B, tiny, thinking and non-thinking"),
    ("qwen3:1.7b", "Qwen3-1.7B-4bit", "Qwen 3 1.7B, small, thinking and non-thinking"),
    ("qwen3:4b", "Qwen3-4B-4bit", "Qwen 3 4B, thinking and non-thinking"),
    ("qwen3:8b", "Qwen3-8B-4bit", "Qwen 3 8B, thinking and non-thinking"),
    ("qwen3:14b", "Qwen3-14B-4bit", "Qwen 3 14B, thinking and non-thinking"),
    ("qwen3:30b", "Qwen3-30B-A3B-4bit", "Qwen 3 30B-A3B mixture of experts, fast for its size"),
    ("qwen3:32b", "Qwen3-32B-4bit", "Qwen 3 32B dense, thinking and non-thinking"),
    # Qwen coders
    ("qwen2.5-coder:1.5b", "Qwen2.5-Coder-1.5B-Instruct-4bit", "Qwen 2.5 Coder 1.5B, completion"),
    ("qwen2.5-coder:3b", "Qwen2.5-Coder-3B-Instruct-4bit", "Qwen 2.5 Coder 3B Instruct, code"),
    ("qwen2.5-coder:7b", "Qwen2.5-Coder-7B-Instruct-4bit", "Qwen 2.5 Coder 7B Instruct, code"),
    ("qwen2.5-coder:14b", "Qwen2.5-Coder-14B-Instruct-4bit", "Qwen 2.5 Coder 14B Instruct, code"),
    ("qwen2.5-coder:32b", "Qwen2.5-Coder-32B-Instruct-4bit", "Qwen 2.5 Coder 32B Instruct, code"),
    ("qwen3-coder:30b", "Qwen3-Coder-30B-A3B-Instruct-4bit", "Qwen 3 Coder 30B-A3B, agentic code"),
    ("qwen3-coder:latest", "Qwen3-Coder-30B-A3B-Instruct-4bit", "Qwen 3 Coder 30B (default tag)"),
    # Gemma 2 / 3
    ("gemma2:2b", "gemma-2-2b-it-4bit", "Gemma 2 2B instruction-tuned, small"),
    ("gemma2:9b", "gemma-2-9b-it-4bit", "Gemma 2 9B instruction-tuned"),
    ("gemma2:27b", "gemma-2-27b-it-4bit", "Gemma 2 27B instruction-tuned"),
    ("gemma2:latest", "gemma-2-9b-it-4bit", "Gemma 2 9B instruction-tuned (default tag)"),
    ("gemma3:1b", "gemma-3-1b-it-4bit", "Gemma 3 1B instruction-tuned, text only"),
    ("gemma3:4b", "gemma-3-4b-it-4bit", "Gemma 3 4B instruction-tuned"),
    ("gemma3:12b", "gemma-3-12b-it-4bit", "Gemma 3 12B instruction-tuned"),
    ("gemma3:27b", "gemma-3-27b-it-4bit", "Gemma 3 27B instruction-tuned"),
    ("gemma3:latest", "gemma-3-4b-it-4bit", "Gemma 3 4B instruction-tuned (default tag)"),
    # Mistral
    ("mistral:7b", "Mistral-7B-Instruct-v0.3-4bit", "Mistral 7B Instruct v0.3"),
    ("mistral-nemo:12b", "Mistral-Nemo-Instruct-2407-4bit", "Mistral Nemo 12B, 128k context"),
    ("mistral-nemo:latest", "Mistral-Nemo-Instruct-2407-4bit", "Mistral Nemo 12B (default tag)"),
    # Phi
    ("phi3.5:3.8b", "Phi-3.5-mini-instruct-4bit", "Phi 3.5 mini 3.8B Instruct, small"),
    ("phi3.5:latest", "Phi-3.5-mini-instruct-4bit", "Phi 3.5 mini 3.8B Instruct (default tag)"),
    ("phi4:14b", "phi-4-4bit", "Phi 4 14B, strong reasoning for its size"),
    ("phi4:latest", "phi-4-4bit", "Phi 4 14B (default tag)"),
    # DeepSeek
    ("deepseek-r1:1.5b", "DeepSeek-R1-Distill-Qwen-1.5B-4bit", "DeepSeek R1 distill, Qwen 1.5B"),
    ("deepseek-r1:7b", "DeepSeek-R1-Distill-Qwen-7B-4bit", "DeepSeek R1 distill, Qwen 7B"),
    ("deepseek-r1:8b", "DeepSeek-R1-Distill-Llama-8B-4bit", "DeepSeek R1 distill, Llama 8B"),
    ("deepseek-r1:14b", "DeepSeek-R1-Distill-Qwen-14B-4bit", "DeepSeek R1 distill, Qwen 14B"),
    ("deepseek-r1:32b", "DeepSeek-R1-Distill-Qwen-32B-4bit", "DeepSeek R1 distill, Qwen 32B"),
    (
        "deepseek-coder-v2:16b",
        "DeepSeek-Coder-V2-Lite-Instruct-4bit-mlx",
        "DeepSeek Coder V2 Lite 16B mixture of experts, code",
    ),
    (
        "deepseek-coder-v2:latest",
        "DeepSeek-Coder-V2-Lite-Instruct-4bit-mlx",
        "DeepSeek Coder V2 Lite 16B (default tag)",
    ),
    # The earlier mlx-lama's short names.
    ("qwen-coder:7b", "Qwen2.5-Coder-7B-Instruct-4bit", "Same as qwen2.5-coder:7b"),
    ("qwen-coder:14b", "Qwen2.5-Coder-14B-Instruct-4bit", "Same as qwen2.5-coder:14b"),
    ("qwen-coder:32b", "Qwen2.5-Coder-32B-Instruct-4bit", "Same as qwen2.5-coder:32b"),
    ("qwen:7b", "Qwen2.5-7B-Instruct-4bit", "Same as qwen2.5:7b"),
    ("qwen:32b", "Qwen2.5-32B-Instruct-4bit", "Same as qwen2.5:32b"),
    ("qwen:72b", "Qwen2.5-72B-Instruct-4bit", "Same as qwen2.5:72b"),
    ("llama:3b", "Llama-3.2-3B-Instruct-4bit", "Same as llama3.2:3b"),
    ("llama:8b", "Meta-Llama-3.1-8B-Instruct-4bit", "Same as llama3.1:8b"),
    ("llama:70b", "Llama-3.3-70B-Instruct-4bit", "Same as llama3.3:70b"),
    ("gemma:2b", "gemma-2-2b-it-4bit", "Same as gemma2:2b"),
    ("gemma:9b", "gemma-2-9b-it-4bit", "Same as gemma2:9b"),
    (
        "deepseek-coder:16b",
        "DeepSeek-Coder-V2-Lite-Instruct-4bit-mlx",
        "Same as deepseek-coder-v2:16b",
    ),
)

# Embedding models (``kind = "embedding"``, served by mlx-embeddings), under Ollama's
# names: (name, mlx-community repo, description, quantization). Ollama's
# nomic-embed-text is not here: its architecture (nomic_bert) is not one that
# mlx-embeddings runs.
_EMBEDDING_TABLE: Final[tuple[tuple[str, str, str, str], ...]] = (
    ("all-minilm:22m", "all-MiniLM-L6-v2-4bit", "all-MiniLM-L6 v2 embeddings, 384-d", "4bit"),
    ("all-minilm:latest", "all-MiniLM-L6-v2-4bit", "all-MiniLM-L6 v2 (default tag)", "4bit"),
    ("bge-large:335m", "bge-large-en-v1.5-4bit", "BGE large English v1.5, 1024-d", "4bit"),
    ("bge-large:latest", "bge-large-en-v1.5-4bit", "BGE large v1.5 (default tag)", "4bit"),
    ("bge-m3:567m", "bge-m3-mlx-4bit", "BGE-M3 multilingual embeddings, 1024-d", "4bit"),
    ("bge-m3:latest", "bge-m3-mlx-4bit", "BGE-M3 (default tag)", "4bit"),
    ("embeddinggemma:300m", "embeddinggemma-300m-6bit", "EmbeddingGemma 300M, 768-d", "6bit"),
    ("embeddinggemma:latest", "embeddinggemma-300m-6bit", "EmbeddingGemma (default tag)", "6bit"),
    (
        "mxbai-embed-large:335m",
        "mxbai-embed-large-v1",
        "mxbai-embed-large v1, 1024-d",
        "unquantized",
    ),
    (
        "mxbai-embed-large:latest",
        "mxbai-embed-large-v1",
        "mxbai-embed-large (default tag)",
        "unquantized",
    ),
    (
        "qwen3-embedding:0.6b",
        "Qwen3-Embedding-0.6B-4bit-DWQ",
        "Qwen3 Embedding 0.6B, multilingual, 1024-d",
        "4bit",
    ),
    ("qwen3-embedding:4b", "Qwen3-Embedding-4B-4bit-DWQ", "Qwen3 Embedding 4B, 2560-d", "4bit"),
    (
        "qwen3-embedding:latest",
        "Qwen3-Embedding-0.6B-4bit-DWQ",
        "Qwen3 Embedding 0.6B (default tag here)",
        "4bit",
    ),
)

_NAMESPACE: Final = "mlx-community/"


@dataclass(frozen=True, slots=True)
class BuiltinModel:
    """One row of the built-in table."""

    name: str
    repo: str
    description: str
    quantization: str = "4bit"
    kind: Literal["generate", "embedding"] = "generate"


#: Every built-in alias: the text models, then the embedding models.
BUILTIN_TABLE: Final[tuple[BuiltinModel, ...]] = (
    *(BuiltinModel(name, _NAMESPACE + repo, text) for name, repo, text in _TABLE),
    *(
        BuiltinModel(name, _NAMESPACE + repo, text, bits, "embedding")
        for name, repo, text, bits in _EMBEDDING_TABLE
    ),
)
