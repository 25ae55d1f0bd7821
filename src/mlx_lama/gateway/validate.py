"""Decides whether an OpenAI-style request body may go upstream, and in what form.

The gateway calls :func:`openai_body` before it forwards a POST to
``/v1/chat/completions``, ``/v1/completions`` or ``/v1/embeddings``, so that nothing
an inference engine (mlx_lm.server) would choke on reaches it: every problem is an
``ApiError(400)`` whose message says what is wrong and what to send instead. Nulls
at the top level mean "absent" and are dropped; a one-string ``prompt`` list is
unwrapped; unknown keys pass through. Pure: no I/O, no logging, the input is never
mutated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from mlx_lama.gateway.http import ApiError, JsonObject, check_sampling, is_int
from mlx_lama.gateway.images import check_image_url

ROLES = ("system", "developer", "user", "assistant", "tool")
TOOL_CHOICES = ("none", "auto", "required")
MAX_TOOLS = 128
MAX_LOGIT_BIAS = 300  # OpenAI's limit


@dataclass(frozen=True, slots=True)
class Limits:
    """What the model behind a route can take."""

    vision: bool = False  # it takes image parts
    context: int | None = None  # its context length in tokens, None when unknown
    vision_hint: str = ""  # how to get image input, said in the 400
    fetches_images: bool = False  # its engine fetches images from web addresses
    generates: bool = True  # it answers chat and completions
    embeds: bool = False  # it answers embeddings


def openai_body(path: str, body: JsonObject, limits: Limits, name: str | None = None) -> JsonObject:
    """The body to send upstream for POST `path` (/v1/chat/completions, /v1/completions
    or /v1/embeddings), or ApiError(400). A new dict; ``body`` is left as it was.
    Any other path is a caller's mistake: ValueError."""
    check = _ROUTES.get(path)
    if check is None:
        raise ValueError(f"no request rules for {path}")
    check_serves(path, limits, name or body.get("model"))
    result = {key: value for key, value in body.items() if value is not None}
    check_sampling(result)
    _check_common(result)
    check(result, limits)
    return result


def check_serves(path: str, limits: Limits, name: object = None) -> None:
    """Model ``name`` does what ``path`` asks: embeddings, or chat and completions.
    Refused as Ollama words it (``"M" does not support embeddings``), with the way out."""
    model = f'"{name}"' if isinstance(name, str) and name else "this model"
    if path == EMBEDDINGS and not limits.embeds:
        raise _bad(
            f"{model} does not support embeddings: it is a text model; use an embedding "
            'model (kind = "embedding" in mlxlama.toml; `mlx-lama pull bge-m3` adds one)'
        )
    if path != EMBEDDINGS and not limits.generates:
        what = "chat" if path == "/v1/chat/completions" else "generate"
        raise _bad(
            f"{model} does not support {what}: it is an embedding model, which answers "
            "/api/embed and /v1/embeddings"
        )


def _bad(message: str) -> ApiError:
    return ApiError(400, message)


def _is_number(value: object) -> bool:
    # math.isfinite overflows on a huge int, so only floats go through it
    return math.isfinite(value) if isinstance(value, float) else is_int(value)


def _is_token_ids(value: object) -> bool:
    """A non-empty list of ints, or of lists: the token-id forms of prompt and input."""
    if not isinstance(value, list) or not value:
        return False
    return all(is_int(v) for v in value) or all(isinstance(v, list) for v in value)


def _check_common(body: JsonObject) -> None:
    if "stream" in body and not isinstance(body["stream"], bool):
        raise _bad("stream must be true or false")
    if "stream_options" in body and not isinstance(body["stream_options"], dict):
        raise _bad('stream_options must be an object, e.g. {"include_usage": true}')
    if "logit_bias" in body:
        _check_logit_bias(body["logit_bias"])


def _check_logit_bias(bias: object) -> None:
    if not isinstance(bias, dict):
        raise _bad("logit_bias must be an object mapping token ids to numbers")
    if len(bias) > MAX_LOGIT_BIAS:
        raise _bad(f"logit_bias allows at most {MAX_LOGIT_BIAS} entries")
    for token, value in bias.items():
        if not (isinstance(token, str) and token.isascii() and token.isdigit()):
            raise _bad('logit_bias keys must be token ids, e.g. "50256"')
        if not _is_number(value) or not -100 <= value <= 100:
            raise _bad(f"logit_bias[{token}] must be a number from -100 to 100")


def _check_n(body: JsonObject) -> None:
    n = body.get("n")
    if n is not None and not (is_int(n) and n == 1):
        raise _bad("n must be 1: this model gives one choice per request; send n requests")


# chat


def _check_chat(body: JsonObject, limits: Limits) -> None:
    if "messages" not in body:
        raise _bad("messages is required: a list of {role, content} objects")
    messages = body["messages"]
    if not isinstance(messages, list):
        raise _bad("messages must be a list of {role, content} objects")
    if not messages:
        raise _bad("messages must not be empty")
    for i, message in enumerate(messages):
        _check_message(f"messages[{i}]", message, limits)
    _check_n(body)
    if "tools" in body:
        _check_tools(body["tools"])
    if "tool_choice" in body:
        _check_tool_choice(body["tool_choice"])


def _check_message(where: str, message: object, limits: Limits) -> None:
    if not isinstance(message, dict):
        raise _bad(f"{where} must be an object with role and content")
    role = message.get("role")
    if role not in ROLES:
        raise _bad(f"{where}.role must be one of {', '.join(ROLES)}")
    content = message.get("content")
    if content is None or content == []:
        if role != "assistant":
            raise _bad(f"{where}.content is required: a string or a list of content parts")
    elif isinstance(content, list):
        for j, part in enumerate(content):
            _check_part(f"{where}.content[{j}]", part, limits)
    elif not isinstance(content, str):
        raise _bad(f"{where}.content must be a string or a list of content parts")
    calls = message.get("tool_calls")
    if calls is not None and not (
        isinstance(calls, list) and all(isinstance(c, dict) for c in calls)
    ):
        raise _bad(f"{where}.tool_calls must be a list of objects")
    name = message.get("name")
    if name is not None and not isinstance(name, str):
        raise _bad(f"{where}.name must be a string")


def _check_part(where: str, part: object, limits: Limits) -> None:
    kind = part.get("type") if isinstance(part, dict) else None
    if not isinstance(part, dict) or not isinstance(kind, str):
        raise _bad(f'{where} must be an object with a type, e.g. {{"type": "text"}}')
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise _bad(f"{where}.text must be a string")
    elif kind == "image_url":
        _check_image(where, part.get("image_url"), limits)
    elif kind in ("input_audio", "file"):
        takes = "text and images" if limits.vision else "text"
        raise _bad(f"{where} is {kind}: this model takes only {takes}")
    else:
        raise _bad(f"{where}.type must be text or image_url")


def _check_image(where: str, image: object, limits: Limits) -> None:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise _bad(f"{where}.image_url must be an object with a string url")
    if not limits.vision:
        hint = f"; {limits.vision_hint}" if limits.vision_hint else ""
        raise _bad(f"this model takes text only: {where} is an image{hint}")
    check_image_url(f"{where}.image_url", url, fetches=limits.fetches_images)


def _check_tools(tools: object) -> None:
    if not isinstance(tools, list):
        raise _bad("tools must be a list of {type: function, function: {name}} objects")
    if len(tools) > MAX_TOOLS:
        raise _bad(f"tools allows at most {MAX_TOOLS} tools")
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise _bad(f'tools[{i}] must be an object with type "function"')
        if not isinstance(function, dict) or not _is_name(function.get("name")):
            raise _bad(f"tools[{i}].function must be an object with a non-empty name")
        if not isinstance(function.get("description", ""), str | None):
            raise _bad(f"tools[{i}].function.description must be a string")
        if not isinstance(function.get("parameters", {}), dict | None):
            raise _bad(f"tools[{i}].function.parameters must be a JSON Schema object")


def _is_name(value: object) -> bool:
    return isinstance(value, str) and value != ""


def _check_tool_choice(choice: object) -> None:
    if choice in TOOL_CHOICES:
        return
    function = choice.get("function") if isinstance(choice, dict) else None
    if not (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(function, dict)
        and _is_name(function.get("name"))
    ):
        raise _bad(
            'tool_choice must be "none", "auto", "required" or'
            ' {"type": "function", "function": {"name": ...}}'
        )


# completions


def _check_completion(body: JsonObject, limits: Limits) -> None:
    if "prompt" not in body:
        raise _bad("prompt is required: a string")
    body["prompt"] = _one_prompt(body["prompt"])
    _check_n(body)
    if body.get("echo", False) is not False:
        raise _bad("echo is not supported: leave it out or set it to false")
    best_of = body.get("best_of")
    if best_of is not None and not (is_int(best_of) and best_of == 1):
        raise _bad("best_of is not supported: leave it out or set it to 1")
    if body.get("suffix", "") != "":  # a string one was framed for the model (fim.py)
        raise _bad("suffix must be a string: the text after the cursor")


def _one_prompt(prompt: object) -> str:
    if isinstance(prompt, str):
        return prompt
    if _is_token_ids(prompt):
        raise _bad("prompt as token ids is not supported: send text")
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        if len(prompt) > 1:
            raise _bad(
                f"prompt as a list of {len(prompt)} prompts is not supported:"
                " send one request per prompt"
            )
        return str(prompt[0])
    raise _bad("prompt must be a string")


# embeddings


def _check_embedding(body: JsonObject, limits: Limits) -> None:
    if "input" not in body:
        raise _bad("input is required: a string or a list of strings")
    given = body["input"]
    if _is_token_ids(given):
        raise _bad("input as token ids is not supported: send text")
    texts = [given] if isinstance(given, str) else given
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise _bad("input must be a string or a list of strings")
    if not texts or "" in texts:
        raise _bad("input must not be empty: send some text")
    dimensions = body.get("dimensions")
    if dimensions is not None and not (is_int(dimensions) and dimensions > 0):
        raise _bad("dimensions must be a positive integer")
    if not isinstance(body.get("truncate", True), bool):
        raise _bad("truncate must be true or false")


EMBEDDINGS = "/v1/embeddings"
_ROUTES: dict[str, Callable[[JsonObject, Limits], None]] = {
    "/v1/chat/completions": _check_chat,
    "/v1/completions": _check_completion,
    EMBEDDINGS: _check_embedding,
}
