"""OpenAI's Responses API in chat-completions terms: pure request translation.

Codex and the ``openai`` SDKs' ``responses.create`` send ``POST /v1/responses``;
the model servers speak chat completions. :func:`chat_request` turns a
Responses body (``input`` as a string or items, ``instructions``, function
tools and their call and output items, ``max_output_tokens``, ``text.format``)
into a chat-completions body; ``responses_answers.py`` turns the answer back.

The gateway keeps no responses: every request carries its whole conversation,
as Codex sends it. A ``previous_response_id`` or an ``item_reference`` is a 400
that says so, as is every hosted tool (web search, file search, ...) and
anything else no engine here can do. Pure: no I/O, no clock reads, no logging.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mlx_lama.gateway.http import ApiError, JsonObject, is_int

STATELESS = (
    "this gateway keeps no responses: send the whole conversation as input items (and store: false)"
)
EFFORTS_ON = ("low", "medium", "high", "xhigh")
EFFORTS_OFF = ("none", "minimal")


def _bad(message: str) -> ApiError:
    return ApiError(400, message)


def chat_request(body: Mapping[str, Any]) -> JsonObject:
    """A Responses body as a chat-completions body (without ``model``, which the caller
    resolves, and without the manifest's defaults, which it adds)."""
    if body.get("previous_response_id"):
        raise _bad(f"previous_response_id is not supported: {STATELESS}")
    if body.get("background") is True:
        raise _bad("background responses are not supported: send the request and wait")
    messages: list[JsonObject] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise _bad("instructions must be a string")
        if instructions:
            messages.append({"role": "system", "content": instructions})
    messages.extend(_input(body.get("input")))
    request: JsonObject = {"messages": messages}
    limit = body.get("max_output_tokens")
    if limit is not None:
        if not is_int(limit) or limit < 1:
            raise _bad("max_output_tokens must be a positive integer")
        request["max_tokens"] = limit
    for key in ("temperature", "top_p", "parallel_tool_calls"):
        if body.get(key) is not None:
            request[key] = body[key]
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream must be true or false")
    request["stream"] = stream
    tools = _tools(body.get("tools"))
    if tools:
        request["tools"] = tools
    if body.get("tool_choice") is not None:
        request["tool_choice"] = _tool_choice(body["tool_choice"])
    fmt = _format(body.get("text"))
    if fmt is not None:
        request["response_format"] = fmt
    return request


def thinking_wanted(body: Mapping[str, Any]) -> bool | None:
    """What ``reasoning.effort`` asks for: True (some effort), False (none or minimal),
    None (not said)."""
    reasoning = body.get("reasoning")
    if reasoning is None:
        return None
    if not isinstance(reasoning, dict):
        raise _bad('reasoning must be an object, e.g. {"effort": "medium"}')
    effort = reasoning.get("effort")
    if effort is None:
        return None
    if effort in EFFORTS_ON:
        return True
    if effort in EFFORTS_OFF:
        return False
    raise _bad(f"reasoning.effort must be one of {', '.join(EFFORTS_OFF + EFFORTS_ON)}")


def _input(given: object) -> list[JsonObject]:
    if isinstance(given, str):
        if not given:
            raise _bad("input must not be empty")
        return [{"role": "user", "content": given}]
    if not isinstance(given, list) or not given:
        raise _bad("input must be a string or a non-empty list of items")
    messages: list[JsonObject] = []
    for index, item in enumerate(given):
        where = f"input[{index}]"
        if not isinstance(item, dict):
            raise _bad(f"{where} must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, where))
        elif kind == "function_call":
            _add_call(messages, item, where)
        elif kind == "function_call_output":
            messages.append(_call_output(item, where))
        elif kind == "reasoning":
            continue  # earlier reasoning stays out of the model's context
        elif kind == "item_reference":
            raise _bad(f"{where}: item_reference is not supported: {STATELESS}")
        else:
            raise _bad(
                f"{where}: {json.dumps(kind)} items are not supported here; send messages, "
                "function_call and function_call_output items"
            )
    return messages


def _message(item: Mapping[str, Any], where: str) -> JsonObject:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise _bad(f"{where}.role must be user, assistant, system or developer")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise _bad(f"{where}.content must be a string or a list of content parts")
    parts = [_part(part, f"{where}.content[{i}]") for i, part in enumerate(content)]
    if all(part["type"] == "text" for part in parts):
        return {"role": role, "content": "".join(part["text"] for part in parts)}
    return {"role": role, "content": parts}


def _part(part: object, where: str) -> JsonObject:
    if not isinstance(part, dict):
        raise _bad(f"{where} must be a content part object")
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        text = part.get("text")
        if not isinstance(text, str):
            raise _bad(f"{where}: a {kind} part needs text (a string)")
        return {"type": "text", "text": text}
    if kind == "refusal":
        return {"type": "text", "text": str(part.get("refusal") or "")}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise _bad(
                f"{where}: send the image as image_url (a URL or a data: URL); "
                "file_id is not supported"
            )
        return {"type": "image_url", "image_url": {"url": url}}
    if kind == "input_file":
        raise _bad(f"{where}: input_file is not supported; send the file's text as input_text")
    raise _bad(f"{where}: unknown content part type {json.dumps(kind)}")


def _add_call(messages: list[JsonObject], item: Mapping[str, Any], where: str) -> None:
    """A function_call item as a tool call of an assistant turn: the turn just before
    when it is the assistant's (a message, or the calls before this one), else a new one."""
    call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments", "")
    if not isinstance(call_id, str) or not isinstance(name, str) or not call_id or not name:
        raise _bad(f"{where}: a function_call needs call_id and name")
    if not isinstance(arguments, str):
        raise _bad(f"{where}: function_call arguments must be a JSON string")
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    if (
        messages
        and messages[-1]["role"] == "assistant"
        and isinstance(messages[-1]["content"], str)
    ):
        messages[-1].setdefault("tool_calls", []).append(call)
    else:
        messages.append({"role": "assistant", "content": "", "tool_calls": [call]})


def _call_output(item: Mapping[str, Any], where: str) -> JsonObject:
    call_id, output = item.get("call_id"), item.get("output")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"{where}: a function_call_output needs call_id")
    if isinstance(output, list):
        texts = [
            _part(part, f"{where}.output")["text"]
            for part in output
            if isinstance(part, dict) and part.get("type") != "input_image"
        ]
        if len(texts) != len(output):
            raise _bad(f"{where}: images in a function_call_output are not supported; send text")
        output = "".join(texts)
    if not isinstance(output, str):
        raise _bad(f"{where}: output must be a string")
    return {"role": "tool", "tool_call_id": call_id, "content": output}


def _tools(tools: object) -> list[JsonObject]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise _bad("tools must be a list")
    functions: list[JsonObject] = []
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise _bad(
                f"{where}: {json.dumps(kind)} tools are hosted by OpenAI and not available on a "
                "local model; describe the tool as a function tool instead"
            )
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f"{where}: a function tool needs a name")
        function: JsonObject = {"name": name}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        functions.append({"type": "function", "function": function})
    return functions


def _tool_choice(choice: object) -> object:
    if choice in ("none", "auto", "required"):
        return choice
    if (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(choice.get("name"), str)
    ):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise _bad('tool_choice must be "none", "auto", "required" or {"type": "function", "name"}')


def _format(text: object) -> JsonObject | None:
    """``text.format`` as chat completions' ``response_format``; None for plain text."""
    if text is None:
        return None
    fmt = text.get("format") if isinstance(text, dict) else None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema" and isinstance(schema := fmt.get("schema"), dict):
        spec: JsonObject = {"name": fmt.get("name") or "response", "schema": schema}
        if fmt.get("strict") is not None:
            spec["strict"] = fmt["strict"]
        return {"type": "json_schema", "json_schema": spec}
    raise _bad(
        'text.format must be {"type": "text" | "json_object"} or '
        '{"type": "json_schema", "name", "schema"}'
    )
