"""Fill in the middle: a prefix and a suffix as the prompt a code model completes.

Editors ask for a completion at the cursor with Ollama's ``suffix`` (or OpenAI's
``suffix`` on ``/v1/completions``): the text before the cursor is the prompt,
the text after it the suffix. Code models trained for it know special tokens
that frame the two; the answer is the middle. :func:`fim_prompt` writes that
frame for the families whose tokens the model's tokenizer has (the same layouts
Ollama's templates use), or gives None for a model without them. Pure.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

PREFIX, SUFFIX = object(), object()  # where the texts go in a layout


@dataclass(frozen=True, slots=True)
class FimLayout:
    """One family's frame: special tokens and the two texts, in order."""

    family: str
    pieces: tuple[object, ...]

    @property
    def tokens(self) -> tuple[str, ...]:
        return tuple(piece for piece in self.pieces if isinstance(piece, str))

    def prompt(self, prefix: str, suffix: str) -> str:
        texts = {id(PREFIX): prefix, id(SUFFIX): suffix}
        return "".join(p if isinstance(p, str) else texts[id(p)] for p in self.pieces)


LAYOUTS: tuple[FimLayout, ...] = (
    FimLayout(
        "Qwen2.5-Coder, CodeGemma, Granite Code",
        ("<|fim_prefix|>", PREFIX, "<|fim_suffix|>", SUFFIX, "<|fim_middle|>"),
    ),
    FimLayout("StarCoder", ("<fim_prefix>", PREFIX, "<fim_suffix>", SUFFIX, "<fim_middle>")),
    FimLayout(
        "DeepSeek-Coder",
        (
            "<\uff5cfim\u2581begin\uff5c>",
            PREFIX,
            "<\uff5cfim\u2581hole\uff5c>",
            SUFFIX,
            "<\uff5cfim\u2581end\uff5c>",
        ),
    ),
    FimLayout("Codestral", ("[SUFFIX]", SUFFIX, "[PREFIX]", PREFIX)),
)


def layout_for(tokens: Collection[str]) -> FimLayout | None:
    """The first layout whose special tokens are all among ``tokens`` (the model's
    added tokens), None when no family's are."""
    for layout in LAYOUTS:
        if all(token in tokens for token in layout.tokens):
            return layout
    return None


def fim_prompt(tokens: Collection[str], prefix: str, suffix: str) -> tuple[str, list[str]] | None:
    """The raw prompt that asks the model for the middle between ``prefix`` and
    ``suffix``, and stop sequences (the frame's own tokens, which must not be
    answered); None for a model without fill-in-the-middle tokens."""
    layout = layout_for(tokens)
    if layout is None:
        return None
    return layout.prompt(prefix, suffix), list(layout.tokens)


def unsupported(name: str) -> str:
    """Why ``name`` cannot take a suffix, and what can."""
    families = "; ".join(f"{layout.family}: {' '.join(layout.tokens)}" for layout in LAYOUTS)
    return (
        f"model '{name}' cannot fill in the middle: its tokenizer has none of the "
        f"fill-in-the-middle tokens this gateway knows ({families}); use a code model "
        "trained for it (e.g. qwen2.5-coder), or send the prompt without suffix"
    )
