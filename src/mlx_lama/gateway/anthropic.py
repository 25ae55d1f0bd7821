"""Anthropic's Messages API in OpenAI terms: pure request translation for the gateway.

Claude Code and the ``anthropic`` SDKs send ``POST /v1/messages``; the model
servers speak OpenAI chat completions. :func:`chat_request` turns a Messages
body into the chat-completions body a backend takes (system, text, image,
``tool_use`` and ``tool_result`` blocks, tools, ``tool_choice``, sampling),
refusing with a 400 what no engine here can do rather than dropping it;
``anthropic_answers.py`` turns the answer back. Wire facts follow
``shared/docs/agent-apis.md``. Pure: no I/O, no clock reads, no logging.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mlx_lama.gateway.http import ApiError, JsonObject, is_int

# Keys of hosted features that no engine here has: refused, never dropped.
_HOSTED = {
    "mcp_servers": "MCP servers are connected by the client here, not by the API",
    "container": "code-execution containers are not available on a local model",
}


def _bad(message: str) -> ApiError:
    return ApiError(400, message)


def chat_request(body: Mapping[str, Any], *, counting: bool = False) -> JsonObject:
    """A Messages body as an OpenAI chat-completions body (without ``model``, which the
    caller resolves, and without the manifest's defaults, which it adds). ``counting``:
    the body of ``/v1/messages/count_tokens``, which has no ``max_tokens``."""
    for key, why in _HOSTED.items():
        if body.get(key):
            raise _bad(f"{key} is not supported: {why}")
    request: JsonObject = {"messages": [*_system(body.get("system")), *_turns(body)]}
    if not counting:
        limit = body.get("max_tokens")
        if not is_int(limit) or limit < 1:
            raise _bad("max_tokens: a positive integer is required (the longest answer, in tokens)")
        request["max_tokens"] = limit
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            request[key] = body[key]
    temperature = body.get("temperature")
    if isinstance(temperature, int | float) and not 0 <= temperature <= 1:
        raise _bad("temperature must be a number from 0 to 1")
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _bad("stop_sequences must be a list of strings")
        if stops:
            request["stop"] = stops
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream must be true or false")
    request["stream"] = stream
    tools = _tools(body.get("tools"))
    if tools:
        request["tools"] = tools
    choice = body.get("tool_choice")
    if choice is not None:
        request.update(_tool_choice(choice, bool(tools)))
    return request


def thinking_wanted(body: Mapping[str, Any]) -> bool | None:
    """What ``thinking`` asks for: True (enabled), False (disabled), None (not said, or
    ``adaptive`` / ``between_tools``: the model's own default)."""
    thinking = body.get("thinking")
    if thinking is None:
        return None
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if budget is not None and (not is_int(budget) or budget < 1):
            raise _bad("thinking.budget_tokens must be a positive integer")
        return True
    if kind == "disabled":
        return False
    if kind in ("adaptive", "between_tools"):  # the model decides: its template's default
        return None
    raise _bad('thinking must be {"type": "enabled", "budget_tokens": N} or {"type": "disabled"}')


def _system(system: object) -> list[JsonObject]:
    if system is None or system in ("", []):
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if isinstance(system, list):
        texts = [_text_of(block, "system") for block in system]
        return [{"role": "system", "content": "\n\n".join(texts)}]
    raise _bad("system must be a string or a list of text blocks")


def _text_of(block: object, where: str) -> str:
    if not isinstance(block, dict) or block.get("type") != "text":
        raise _bad(f"{where} blocks must be text blocks")
    text = block.get("text")
    if not isinstance(text, str):
        raise _bad(f"{where}: a text block needs text (a string)")
    return text


def _turns(body: Mapping[str, Any]) -> list[JsonObject]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages: a non-empty list of user and assistant turns is required")
    turns: list[JsonObject] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _bad(f"{where} must be an object with role and content")
        role = message.get("role")
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list):
            raise _bad(f"{where}.content must be a string or a list of content blocks")
        if role == "user":
            turns.extend(_user_turn(content, where))
        elif role == "assistant":
            turns.append(_assistant_turn(content, where))
        else:
            raise _bad(f'{where}.role must be "user" or "assistant" (system goes in system)')
    return turns


def _user_turn(blocks: list[Any], where: str) -> list[JsonObject]:
    """A user turn's blocks: its tool results first, as OpenAI tool messages (which must
    follow the assistant's calls), then the rest as one user message."""
    results: list[JsonObject] = []
    parts: list[JsonObject] = []
    for index, block in enumerate(blocks):
        at = f"{where}.content[{index}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_result":
            call_id = block.get("tool_use_id")
            if not isinstance(call_id, str) or not call_id:
                raise _bad(f"{at}: a tool_result needs tool_use_id")
            text, images = _result_content(block.get("content"), at)
            if block.get("is_error") is True:
                text = f"Error: {text}" if text else "Error"
            results.append({"role": "tool", "tool_call_id": call_id, "content": text})
            parts.extend(images)  # a tool's images go to the model in the user turn after
        else:
            parts.append(_part(block, at))
    turns = results
    if parts:
        if all(part["type"] == "text" for part in parts):
            turns.append({"role": "user", "content": "\n\n".join(p["text"] for p in parts)})
        else:
            turns.append({"role": "user", "content": parts})
    return turns


def _result_content(content: object, where: str) -> tuple[str, list[JsonObject]]:
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise _bad(f"{where}.content must be a string or a list of text and image blocks")
    texts: list[str] = []
    images: list[JsonObject] = []
    for block in content:
        part = _part(block, where)
        if part["type"] == "text":
            texts.append(part["text"])
        else:
            images.append(part)
    return "\n\n".join(texts), images


def _part(block: object, where: str) -> JsonObject:
    """A user content block as an OpenAI content part."""
    kind = block.get("type") if isinstance(block, dict) else None
    if kind == "text":
        return {"type": "text", "text": _text_of(block, where)}
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": _image_url(block, where)}}  # type: ignore[arg-type]
    if kind == "document":
        raise _bad(f"{where}: document blocks (PDF) are not supported; send the text instead")
    if kind in ("tool_use", "thinking", "redacted_thinking"):
        raise _bad(f"{where}: {kind} blocks belong in assistant turns")
    raise _bad(f"{where}: unknown content block type {json.dumps(kind)}")


def _image_url(block: Mapping[str, Any], where: str) -> str:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        media, data = source.get("media_type"), source.get("data")  # type: ignore[union-attr]
        if not isinstance(media, str) or not isinstance(data, str) or not data:
            raise _bad(f"{where}: a base64 image needs media_type and data")
        return f"data:{media};base64,{data}"
    if kind == "url" and isinstance(url := source.get("url"), str) and url:  # type: ignore[union-attr]
        return url
    raise _bad(f'{where}: an image source must be {{"type": "base64", ...}} or {{"type": "url"}}')


def _assistant_turn(blocks: list[Any], where: str) -> JsonObject:
    """An assistant turn: its text, and its tool_use blocks as OpenAI tool calls. Thinking
    blocks clients send back are left out, as Anthropic leaves earlier turns' thinking
    out of the model's context."""
    texts: list[str] = []
    calls: list[JsonObject] = []
    for index, block in enumerate(blocks):
        at = f"{where}.content[{index}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(_text_of(block, at))
        elif kind == "tool_use":
            calls.append(_call(block, at))
        elif kind not in ("thinking", "redacted_thinking"):
            raise _bad(f"{at}: an assistant turn takes text, tool_use and thinking blocks")
    turn: JsonObject = {"role": "assistant", "content": "".join(texts)}
    if calls:
        turn["tool_calls"] = calls
    return turn


def _call(block: Mapping[str, Any], where: str) -> JsonObject:
    call_id, name, given = block.get("id"), block.get("name"), block.get("input", {})
    if not isinstance(call_id, str) or not isinstance(name, str) or not call_id or not name:
        raise _bad(f"{where}: a tool_use block needs id and name")
    if not isinstance(given, dict):
        raise _bad(f"{where}: tool_use input must be an object")
    arguments = json.dumps(given, ensure_ascii=False)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _tools(tools: object) -> list[JsonObject]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise _bad("tools must be a list")
    functions: list[JsonObject] = []
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise _bad(f"{where} must be an object with a name")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise _bad(
                f"{where}: {kind} is one of Anthropic's server tools, which a local model "
                "does not have; describe it as a custom tool with an input_schema instead"
            )
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise _bad(f"{where}: input_schema (a JSON schema object) is required")
        function: JsonObject = {"name": tool["name"], "parameters": schema}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        functions.append({"type": "function", "function": function})
    return functions


def _tool_choice(choice: object, has_tools: bool) -> JsonObject:
    if not isinstance(choice, dict):
        choice = {}
    kind = choice.get("type")
    fields: JsonObject = {}
    if choice.get("disable_parallel_tool_use") is True:
        fields["parallel_tool_calls"] = False
    if kind == "none":
        fields["tool_choice"] = "none"
    elif kind == "auto":
        fields["tool_choice"] = "auto"
    elif kind == "any":
        fields["tool_choice"] = "required"
    elif kind == "tool" and isinstance(name := choice.get("name"), str):
        fields["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise _bad(
            'tool_choice must be {"type": "auto" | "any" | "none"} or {"type": "tool", "name"}'
        )
    if kind in ("any", "tool") and not has_tools:
        raise _bad(f'tool_choice "{kind}" needs tools')
    return fields
